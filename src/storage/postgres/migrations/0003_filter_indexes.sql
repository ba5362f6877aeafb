-- 0003: indexes for the list filters, so that a filtered page costs what the
-- page holds, not what the owner holds (see `storage::plan`).
--
-- status and priority: one owner's tasks with one value are contiguous and
-- in id order, so a keyset page is one index range from its cursor.
CREATE INDEX tasks_owner_status_id_idx ON tasks (owner, status, id);
CREATE INDEX tasks_owner_priority_id_idx ON tasks (owner, priority, id);
-- due_at: the ids of the tasks due before a bound, read in due order (the
-- store then pages through them by id when there are few enough).
CREATE INDEX tasks_owner_due_at_idx ON tasks (owner, due_at, id) WHERE due_at IS NOT NULL;

-- Tags: one row per tag of a task, in (owner, tag, id) order, which a GIN
-- index on `tasks.tags` cannot give (it returns matches unordered, so a
-- page would sort every match). Kept by a trigger in the same transaction
-- as every write to `tasks`, including COPY; TRUNCATE of `tasks` must name
-- this table too.
CREATE TABLE task_tags (
    owner text COLLATE "C" NOT NULL,
    tag   text COLLATE "C" NOT NULL,
    id    uuid NOT NULL,
    PRIMARY KEY (owner, tag, id)
);

CREATE FUNCTION task_tags_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        DELETE FROM task_tags WHERE owner = OLD.owner AND id = OLD.id
            AND tag = ANY (OLD.tags);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO task_tags (owner, tag, id)
            SELECT NEW.owner, t, NEW.id FROM unnest(NEW.tags) AS t
            ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

-- The WHEN conditions keep the function out of writes that change no tag:
-- tasks without tags, and updates of other columns.
CREATE TRIGGER tasks_task_tags_insert AFTER INSERT ON tasks
    FOR EACH ROW WHEN (cardinality(NEW.tags) > 0) EXECUTE FUNCTION task_tags_sync();
CREATE TRIGGER tasks_task_tags_delete AFTER DELETE ON tasks
    FOR EACH ROW WHEN (cardinality(OLD.tags) > 0) EXECUTE FUNCTION task_tags_sync();
CREATE TRIGGER tasks_task_tags_update AFTER UPDATE ON tasks
    FOR EACH ROW WHEN ((OLD.owner, OLD.id, OLD.tags) IS DISTINCT FROM (NEW.owner, NEW.id, NEW.tags))
    EXECUTE FUNCTION task_tags_sync();

INSERT INTO task_tags (owner, tag, id)
    SELECT owner, t, id FROM tasks, unnest(tags) AS t
    ON CONFLICT DO NOTHING;
