//! The listing statement, built from a query: only the filters that are set
//! appear in it, so each combination of filters gets its own cached plan.

use tokio_postgres::types::ToSql;

use super::rows::to_i64;
use crate::domain::{ListQuery, Order};

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

/// The listing statement for `query` and its parameters. Only the filters
/// that are set appear in the SQL, so each combination gets its own cached
/// plan: an index scan of `(owner, id)` from the cursor, in the page's order.
pub fn list_sql(owner: &str, query: &ListQuery) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
    let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE owner = $1");
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(owner.to_owned())];
    let mut add = |sql: &mut String, clause: &str, p: Box<dyn ToSql + Sync + Send>| {
        params.push(p);
        sql.push_str(&clause.replace('?', &format!("${}", params.len())));
    };
    if let Some(after) = query.after {
        let clause = match query.order {
            Order::Asc => " AND id > ?",
            Order::Desc => " AND id < ?",
        };
        add(&mut sql, clause, Box::new(after.as_uuid()));
    }
    if let Some(s) = query.status {
        add(&mut sql, " AND status = ?", Box::new(s.as_str()));
    }
    if let Some(p) = query.priority {
        add(&mut sql, " AND priority = ?", Box::new(p.as_str()));
    }
    if let Some(t) = &query.tag {
        add(&mut sql, " AND tags @> ARRAY[?::text]", Box::new(t.clone()));
    }
    if let Some(b) = query.due_before {
        add(&mut sql, " AND due_at < ?", Box::new(b));
    }
    if let Some(q) = &query.q {
        add(
            &mut sql,
            " AND title_lower LIKE ? ESCAPE '\\'",
            Box::new(contains_pattern(q)),
        );
    }
    let order = match query.order {
        Order::Asc => "ASC",
        Order::Desc => "DESC",
    };
    // One row more than the page tells whether a next page exists.
    add(
        &mut sql,
        &format!(" ORDER BY id {order} LIMIT ?"),
        Box::new(to_i64(query.limit as u64).saturating_add(1)),
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
            tag: Some("ops".into()),
            after: Some(TaskId::new()),
            ..ListQuery::default()
        };
        let (sql, params) = list_sql("alice", &q);
        assert!(sql.ends_with(
            "WHERE owner = $1 AND id < $2 AND tags @> ARRAY[$3::text] ORDER BY id DESC LIMIT $4"
        ));
        assert_eq!(params.len(), 4);
    }
}
