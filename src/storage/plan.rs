//! How a page of a filtered listing is found: one decision for every
//! backend, so that both read the same candidates and return the same pages.
//! The backends only do the I/O.
//!
//! Every filter but `q` has an index ordered by task id within its value
//! (redb: `tables::TASK_INDEX`; PostgreSQL: the indexes of migration 0003),
//! so the tasks with one status, one priority or one tag are a contiguous
//! range in page order, and a page continues after its cursor with one seek.
//!
//! 1. **`due_before`, when selective.** The due index is in due-date order,
//!    not id order, so it cannot serve a keyset page directly. The store reads
//!    the ids of the owner's tasks due before the bound, at most
//!    [`ListQuery::budget`] + 1 of them. If there are at most `budget`, those
//!    ids beyond the cursor, in page order, are the candidates: each one's
//!    record is read and checked against every filter. Cost: at most `budget`
//!    index entries and `budget` records, however many tasks the owner has.
//! 2. **Otherwise, one driving range** ([`driver`]): the tag index if `tag`
//!    is set, else the status index, else the priority index, else the
//!    tasks themselves (id order). Each entry from the cursor on is a
//!    candidate; its record is read and checked against the remaining
//!    filters. Tags come first because a tag is usually the most selective
//!    (status and priority have three values each); the choice is static,
//!    so it needs no statistics and is the same on both backends.
//!
//! **The scan budget** ([`ListQuery::budget`]) bounds the candidates of a
//! page in case 2: a page stops after `limit` matches plus one (which says
//! that a next page exists) or after `budget` candidates, whichever comes
//! first. In the second case the page holds the matches found (possibly
//! none) and `next` is the id of the last candidate examined: the client
//! continues from there and never misses a task, since every task between
//! the cursor and `next` was examined. Worst cases, per page: `q` alone, or
//! a filter whose driving range is broad while the other filters reject
//! almost all of it (`status=todo&priority=high` with few such tasks), and a
//! broad `due_before` combined with a selective filter of no index: at most
//! `budget` candidates, each one record read. A `q` search through N tasks
//! takes about N / `budget` requests.
//!
//! Keyset guarantees: every candidate sequence is in page order by id, and a
//! page reads one snapshot, so a task that exists and matches throughout a
//! listing appears exactly once, whatever the pages' sizes and whichever
//! plan each page took.

use crate::domain::{ListQuery, Priority, Status, Task, TaskId};
use crate::storage::Page;

/// The ordered range of candidates of a page (case 2 of the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver<'q> {
    /// The owner's tasks in id order.
    Id,
    Tag(&'q str),
    Status(Status),
    Priority(Priority),
}

/// The driving range for `q`: tag, then status, then priority, then id.
pub fn driver(q: &ListQuery) -> Driver<'_> {
    if let Some(t) = &q.tag {
        Driver::Tag(t)
    } else if let Some(s) = q.status {
        Driver::Status(s)
    } else if let Some(p) = q.priority {
        Driver::Priority(p)
    } else {
        Driver::Id
    }
}

/// Whether a page driven by `d` needs to check any filter on the record
/// (then a page may end on the budget, and the backend must say where).
pub fn has_residual(q: &ListQuery, d: Driver<'_>) -> bool {
    let by_tag = matches!(d, Driver::Tag(_));
    let by_status = matches!(d, Driver::Status(_));
    let by_priority = matches!(d, Driver::Priority(_));
    q.q.is_some()
        || q.due_before.is_some()
        || (q.tag.is_some() && !by_tag)
        || (q.status.is_some() && !by_status)
        || (q.priority.is_some() && !by_priority)
}

/// Builds a page from candidates offered in page order (for backends that
/// filter in their own code).
pub struct PageBuilder<'q> {
    query: &'q ListQuery,
    /// `None` when the candidates are already bounded (case 1).
    budget: Option<usize>,
    examined: usize,
    last_candidate: Option<TaskId>,
    items: Vec<Task>,
    next: Option<TaskId>,
}

impl<'q> PageBuilder<'q> {
    /// For a driving range, under the query's budget.
    pub fn budgeted(query: &'q ListQuery) -> Self {
        Self::new(query, Some(query.budget()))
    }

    /// For candidates already bounded by the budget (the due-date ids).
    pub fn bounded(query: &'q ListQuery) -> Self {
        Self::new(query, None)
    }

    fn new(query: &'q ListQuery, budget: Option<usize>) -> Self {
        Self {
            query,
            budget,
            examined: 0,
            last_candidate: None,
            items: Vec::with_capacity(query.limit),
            next: None,
        }
    }

    /// Counts candidate `id` against the budget; `false` when the budget is
    /// spent (the page then ends before this candidate, whose record need
    /// not be read).
    pub fn admit(&mut self, id: TaskId) -> bool {
        if self.budget.is_some_and(|b| self.examined == b) {
            self.next = self.last_candidate;
            return false;
        }
        self.examined += 1;
        self.last_candidate = Some(id);
        true
    }

    /// The admitted candidate's task (`None` if its record is missing or
    /// unreadable: it is left out). `false` when the page is complete.
    pub fn offer(&mut self, task: Option<Task>) -> bool {
        let Some(task) = task else { return true };
        if !self.query.matches(&task) {
            return true;
        }
        if self.items.len() == self.query.limit {
            self.next = self.items.last().map(|t| t.id);
            return false;
        }
        self.items.push(task);
        true
    }

    pub fn finish(self) -> Page {
        Page {
            items: self.items,
            next: self.next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Order, parse_create};

    fn task(title: &str) -> Task {
        Task::create(parse_create(&serde_json::json!({ "title": title })).unwrap())
    }

    #[test]
    fn the_driver_prefers_tag_then_status_then_priority() {
        let mut q = ListQuery {
            status: Some(Status::Done),
            priority: Some(Priority::High),
            ..ListQuery::default()
        };
        assert_eq!(driver(&q), Driver::Status(Status::Done));
        assert!(has_residual(&q, driver(&q)));
        q.tag = Some("x".into());
        assert_eq!(driver(&q), Driver::Tag("x"));
        q = ListQuery {
            priority: Some(Priority::Low),
            ..ListQuery::default()
        };
        assert_eq!(driver(&q), Driver::Priority(Priority::Low));
        assert!(!has_residual(&q, driver(&q)));
        assert_eq!(driver(&ListQuery::default()), Driver::Id);
    }

    #[test]
    fn a_spent_budget_ends_the_page_at_the_last_candidate() {
        let q = ListQuery {
            limit: 2,
            q: Some("yes".into()),
            scan_budget: 4,
            order: Order::Asc,
            ..ListQuery::default()
        };
        let tasks: Vec<Task> = ["no", "yes", "no", "no", "yes"]
            .iter()
            .map(|t| task(t))
            .collect();
        let mut b = PageBuilder::budgeted(&q);
        for t in &tasks {
            if !b.admit(t.id) || !b.offer(Some(t.clone())) {
                break;
            }
        }
        let page = b.finish();
        assert_eq!(page.items, vec![tasks[1].clone()]);
        assert_eq!(page.next, Some(tasks[3].id));
    }

    #[test]
    fn a_full_page_ends_at_its_last_match() {
        let q = ListQuery {
            limit: 1,
            q: Some("yes".into()),
            ..ListQuery::default()
        };
        let tasks: Vec<Task> = ["yes", "no", "yes"].iter().map(|t| task(t)).collect();
        let mut b = PageBuilder::bounded(&q);
        for t in &tasks {
            if !b.admit(t.id) || !b.offer(Some(t.clone())) {
                break;
            }
        }
        let page = b.finish();
        assert_eq!(page.items, vec![tasks[0].clone()]);
        assert_eq!(page.next, Some(tasks[0].id));
    }
}
