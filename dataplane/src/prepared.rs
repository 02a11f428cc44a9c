//! Named prepared statements under transaction pooling.
//!
//! A client's statement `S_1` may have to exist on whichever server connection the client
//! gets next. Each core gives every distinct (query, parameter types) one id and one server
//! name (`sluice_<core>_<id>`); the session maps the client's names to these and prepares them
//! on a server connection when it lacks them, as PgBouncer 1.21+ and PgDog do.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

/// Distinct statements remembered per core before the registry starts afresh (ids keep
/// increasing, so names never collide).
const MAX_STATEMENTS: usize = 100_000;

/// A prepared statement as the proxy knows it.
#[derive(Debug)]
pub struct Statement {
    /// Unique on this core.
    pub id: u64,
    /// Name used on server connections.
    pub server_name: String,
    /// SQL text.
    pub query: Box<str>,
    /// Raw parameter type list of the Parse message.
    pub param_types: Box<[u8]>,
    /// A server of this core parsed it: the text is valid SQL for these parameter types, so
    /// a client's Parse of it can be answered without a server.
    pub parsed: Cell<bool>,
}

/// One core's statements, by text.
#[derive(Debug)]
pub struct StatementRegistry {
    core: usize,
    next_id: u64,
    count: usize,
    by_query: HashMap<Box<str>, Vec<Rc<Statement>>>,
}

impl StatementRegistry {
    /// An empty registry for `core`.
    pub fn new(core: usize) -> Self {
        Self {
            core,
            next_id: 1,
            count: 0,
            by_query: HashMap::new(),
        }
    }

    /// The statement for this text and parameter types, if there is one.
    pub fn get(&self, query: &str, param_types: &[u8]) -> Option<&Rc<Statement>> {
        self.by_query
            .get(query)
            .and_then(|v| v.iter().find(|s| &*s.param_types == param_types))
    }

    /// The statement for this text and parameter types, created on first sight.
    pub fn intern(&mut self, query: &str, param_types: &[u8]) -> Rc<Statement> {
        if let Some(s) = self.get(query, param_types) {
            return s.clone();
        }
        if self.count >= MAX_STATEMENTS {
            self.by_query.clear();
            self.count = 0;
        }
        let id = self.next_id;
        self.next_id += 1;
        let stmt = Rc::new(Statement {
            id,
            server_name: format!("sluice_{}_{}", self.core, id),
            query: query.into(),
            param_types: param_types.into(),
            parsed: Cell::new(false),
        });
        self.by_query
            .entry(query.into())
            .or_default()
            .push(stmt.clone());
        self.count += 1;
        stmt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_same_statement() {
        let mut r = StatementRegistry::new(3);
        let a = r.intern("select $1", b"\0\x01\0\0\0\x17");
        let b = r.intern("select $1", b"\0\x01\0\0\0\x17");
        let c = r.intern("select $1", b"\0\0");
        assert!(Rc::ptr_eq(&a, &b));
        assert_ne!(a.id, c.id);
        assert_eq!(a.server_name, format!("sluice_3_{}", a.id));
    }
}
