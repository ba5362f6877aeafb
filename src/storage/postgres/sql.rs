//! The listing statement, built from a query: only the filters that are set
//! appear in it, so each combination of filters gets its own cached plan.

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::rows::to_i64;
use crate::domain::{ListQuery, Order};
use crate::storage::plan::{self, Driver};

/// Columns of a task, in the order [`task_from_row`] reads them.
pub(super) const TASK_COLUMNS: &str =
    "id, title, description, status, priority, due_at, tags, created_at, updated_at, version";

/// `q` as a LIKE pattern that matches it literally anywhere in the text.
pub(super) fn contains_pattern(q: &str) -> String {
    let mut p = String::with_capacity(q.len() + 2);
    p.push('%');
    for c in q.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// A statement's parameters.
pub type Params = Vec<Box<dyn ToSql + Sync + Send>>;

/// Appends `clause`, whose `?` stands for the parameter `p`.
fn add(sql: &mut String, params: &mut Params, clause: &str, p: Box<dyn ToSql + Sync + Send>) {
    params.push(p);
    sql.push_str(&clause.replace('?', &format!("${}", params.len())));
}

/// `ASC` or `DESC`.
fn direction(order: Order) -> &'static str {
    match order {
        Order::Asc => "ASC",
        Order::Desc => "DESC",
    }
}

/// The keyset condition on `column` for a page after the cursor.
fn after_cursor(sql: &mut String, params: &mut Params, query: &ListQuery, column: &str) {
    if let Some(after) = query.after {
        let op = match query.order {
            Order::Asc => ">",
            Order::Desc => "<",
        };
        add(
            sql,
            params,
            &format!(" AND {column} {op} ?"),
            Box::new(after.as_uuid()),
        );
    }
}

/// The filters of `query` that `served` does not already apply, as
/// conditions on the columns of `tasks`.
fn filters(sql: &mut String, params: &mut Params, query: &ListQuery, served: Option<Driver<'_>>) {
    if let Some(t) = &query.tag
        && !matches!(served, Some(Driver::Tag(_)))
    {
        add(
            sql,
            params,
            " AND tags @> ARRAY[?::text]",
            Box::new(t.clone()),
        );
    }
    if let Some(s) = query.status
        && !matches!(served, Some(Driver::Status(_)))
    {
        add(sql, params, " AND status = ?", Box::new(s.as_str()));
    }
    if let Some(p) = query.priority
        && !matches!(served, Some(Driver::Priority(_)))
    {
        add(sql, params, " AND priority = ?", Box::new(p.as_str()));
    }
    if let Some(b) = query.due_before {
        add(sql, params, " AND due_at < ?", Box::new(b));
    }
    if let Some(q) = &query.q {
        add(
            sql,
            params,
            " AND title_lower LIKE ? ESCAPE '\\'",
            Box::new(contains_pattern(q)),
        );
    }
}

/// The first `limit` candidates of a page driven by `driver` (case 2 of
/// `storage::plan`), from the cursor in page order: `columns` of each. An
/// index range, one seek from the cursor, pulled only as far as needed.
/// Through the tag table, the limit applies to its entries, and each entry's
/// task is one primary-key lookup: both subqueries are fences (LIMIT, OFFSET
/// 0) the planner cannot flatten into a hash join, which would read every
/// task of the owner with the other filters.
fn candidates(
    sql: &mut String,
    params: &mut Params,
    owner: &str,
    query: &ListQuery,
    driver: Driver<'_>,
    columns: &str,
    limit: i64,
) {
    params.push(Box::new(owner.to_owned()));
    let dir = direction(query.order);
    match driver {
        Driver::Tag(t) => {
            // `id` from the tag table: the page's order is the order of its
            // index, which the planner then needs not sort again.
            let qualified: Vec<String> = columns
                .split(", ")
                .map(|c| match c {
                    "id" => "g.id".to_owned(),
                    c => format!("t.{c}"),
                })
                .collect();
            sql.push_str(&format!(
                "SELECT {} FROM (SELECT id FROM task_tags WHERE owner = $1",
                qualified.join(", ")
            ));
            add(sql, params, " AND tag = ?", Box::new(t.to_owned()));
            after_cursor(sql, params, query, "id");
            add(
                sql,
                params,
                &format!(" ORDER BY id {dir} LIMIT ?"),
                Box::new(limit),
            );
            sql.push_str(&format!(
                ") g CROSS JOIN LATERAL (SELECT {columns} FROM tasks \
                 WHERE owner = $1 AND id = g.id OFFSET 0) t ORDER BY g.id {dir}"
            ));
        }
        _ => {
            sql.push_str(&format!("SELECT {columns} FROM tasks WHERE owner = $1"));
            match driver {
                Driver::Status(s) => add(sql, params, " AND status = ?", Box::new(s.as_str())),
                Driver::Priority(p) => add(sql, params, " AND priority = ?", Box::new(p.as_str())),
                _ => {}
            }
            after_cursor(sql, params, query, "id");
            add(
                sql,
                params,
                &format!(" ORDER BY id {dir} LIMIT ?"),
                Box::new(limit),
            );
        }
    }
}

/// One row more than the page tells whether a next page exists.
fn page_rows(query: &ListQuery) -> i64 {
    to_i64(query.limit as u64).saturating_add(1)
}

/// The page statement of case 2 of `storage::plan`: at most `limit + 1`
/// matches among the first `budget` candidates of the driving range. With no
/// filter left to check, the candidates are the page. The subquery's LIMIT
/// also keeps the planner from pushing the remaining filters into the
/// driving scan.
pub fn list_sql(owner: &str, query: &ListQuery) -> (String, Params) {
    let driver = plan::driver(query);
    let mut sql = String::new();
    let mut params = Params::new();
    if !plan::has_residual(query, driver) {
        let rows = page_rows(query);
        candidates(
            &mut sql,
            &mut params,
            owner,
            query,
            driver,
            TASK_COLUMNS,
            rows,
        );
        return (sql, params);
    }
    sql.push_str(&format!("SELECT {TASK_COLUMNS} FROM ("));
    let columns = format!("{TASK_COLUMNS}, title_lower");
    let budget = to_i64(query.budget() as u64);
    candidates(
        &mut sql,
        &mut params,
        owner,
        query,
        driver,
        &columns,
        budget,
    );
    sql.push_str(") c WHERE true");
    filters(&mut sql, &mut params, query, Some(driver));
    sql.push_str(&format!(" ORDER BY id {}", direction(query.order)));
    add(
        &mut sql,
        &mut params,
        " LIMIT ?",
        Box::new(page_rows(query)),
    );
    (sql, params)
}

/// Where a page of [`list_sql`] that found fewer than `limit + 1` matches
/// ends: the id of the `budget`-th candidate, and a second row if a further
/// candidate exists (then the page ended on its budget and continues after
/// that id). Reads the driving index only.
pub fn budget_end_sql(owner: &str, query: &ListQuery) -> (String, Params) {
    let mut params: Params = vec![Box::new(owner.to_owned())];
    let driver = plan::driver(query);
    let table = match driver {
        Driver::Tag(_) => "task_tags",
        _ => "tasks",
    };
    let mut sql = format!("SELECT id FROM {table} WHERE owner = $1");
    match driver {
        Driver::Tag(t) => add(
            &mut sql,
            &mut params,
            " AND tag = ?",
            Box::new(t.to_owned()),
        ),
        Driver::Status(s) => add(
            &mut sql,
            &mut params,
            " AND status = ?",
            Box::new(s.as_str()),
        ),
        Driver::Priority(p) => add(
            &mut sql,
            &mut params,
            " AND priority = ?",
            Box::new(p.as_str()),
        ),
        Driver::Id => {}
    }
    after_cursor(&mut sql, &mut params, query, "id");
    sql.push_str(&format!(" ORDER BY id {}", direction(query.order)));
    add(
        &mut sql,
        &mut params,
        " OFFSET ? LIMIT 2",
        Box::new(to_i64(query.budget() as u64 - 1)),
    );
    (sql, params)
}

/// Case 1 of `storage::plan`: the ids of the owner's tasks due before
/// `before`, at most `max` of them, read in due order from the due index.
pub fn due_ids_sql(owner: &str, before: DateTime<Utc>, max: usize) -> (String, Params) {
    (
        "SELECT id FROM tasks WHERE owner = $1 AND due_at < $2 ORDER BY due_at LIMIT $3".into(),
        vec![
            Box::new(owner.to_owned()),
            Box::new(before),
            Box::new(to_i64(max as u64)),
        ],
    )
}

/// The page among the tasks `ids` (case 1 of `storage::plan`, the cursor
/// already applied): every filter checked, in page order.
pub fn ids_page_sql(owner: &str, query: &ListQuery, ids: Vec<Uuid>) -> (String, Params) {
    let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE owner = $1 AND id = ANY($2)");
    let mut params: Params = vec![Box::new(owner.to_owned()), Box::new(ids)];
    filters(&mut sql, &mut params, query, None);
    sql.push_str(&format!(" ORDER BY id {}", direction(query.order)));
    add(
        &mut sql,
        &mut params,
        " LIMIT ?",
        Box::new(page_rows(query)),
    );
    (sql, params)
}

pub(super) fn refs(params: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TaskId;

    #[test]
    fn like_pattern_escapes_wildcards() {
        assert_eq!(contains_pattern("a%b_c\\d"), "%a\\%b\\_c\\\\d%");
        assert_eq!(contains_pattern(""), "%%");
    }

    #[test]
    fn list_sql_has_only_the_filters_set() {
        let q = ListQuery {
            limit: 10,
            order: Order::Desc,
            status: Some(crate::domain::Status::Done),
            after: Some(TaskId::new()),
            ..ListQuery::default()
        };
        let (sql, params) = list_sql("alice", &q);
        assert!(
            sql.ends_with(
                "FROM tasks WHERE owner = $1 AND status = $2 AND id < $3 ORDER BY id DESC LIMIT $4"
            ),
            "{sql}"
        );
        assert_eq!(params.len(), 4);
        let q = ListQuery {
            tag: Some("ops".into()),
            q: Some("x".into()),
            ..q
        };
        let (sql, params) = list_sql("alice", &q);
        assert!(
            sql.ends_with(
                "WHERE owner = $1 AND tag = $2 AND id < $3 ORDER BY id DESC LIMIT $4) g CROSS JOIN LATERAL \
                 (SELECT id, title, description, status, priority, due_at, tags, created_at, updated_at, version, title_lower \
                 FROM tasks WHERE owner = $1 AND id = g.id OFFSET 0) t ORDER BY g.id DESC) c \
                 WHERE true AND status = $5 AND title_lower LIKE $6 ESCAPE '\\' ORDER BY id DESC LIMIT $7"
            ),
            "{sql}"
        );
        assert_eq!(params.len(), 7);
    }
}
