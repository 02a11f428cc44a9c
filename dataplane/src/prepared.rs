//! Named prepared statements under transaction pooling.
//!
//! A client's statement `S_1` may have to exist on whichever server connection the client
//! gets next. Each core gives every distinct (query, parameter types) one id and one server
//! name (`sluice_<core>_<id>`); the session maps the client's names to these and prepares them
//! on a server connection when it lacks them, as PgBouncer 1.21+ and PgDog do.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::client_encoding::ClientEncoding;

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
    /// SQL text, as the client sent it.
    pub query: Box<[u8]>,
    /// The client encoding the text was read in, when it is not ASCII (the same bytes mean
    /// another statement in another encoding, and the server reads them in the one in force).
    pub read_in: Option<ClientEncoding>,
    /// Raw parameter type list of the Parse message.
    pub param_types: Box<[u8]>,
    /// A server of this core parsed it: the text is valid SQL for these parameter types, so
    /// a client's Parse of it can be answered without a server.
    pub parsed: Cell<bool>,
}

impl Statement {
    /// Whether a server reading client text in `encoding` reads this statement as it was
    /// judged.
    pub fn reads_alike(&self, encoding: ClientEncoding) -> bool {
        self.read_in.is_none_or(|e| e == encoding)
    }
}

/// One core's statements, by text and the encoding it was read in.
#[derive(Debug)]
pub struct StatementRegistry {
    core: usize,
    next_id: u64,
    count: usize,
    by_query: HashMap<Box<[u8]>, Vec<Rc<Statement>>>,
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

    /// The statement for this text (read in `encoding`) and parameter types, if there is one.
    /// ASCII text is the same statement in every encoding.
    pub fn get(
        &self,
        query: &[u8],
        encoding: ClientEncoding,
        param_types: &[u8],
    ) -> Option<&Rc<Statement>> {
        let read_in = (!query.is_ascii()).then_some(encoding);
        self.by_query.get(query).and_then(|v| {
            v.iter()
                .find(|s| &*s.param_types == param_types && s.read_in == read_in)
        })
    }

    /// The statement for this text (read in `encoding`) and parameter types, created on
    /// first sight.
    pub fn intern(
        &mut self,
        query: &[u8],
        encoding: ClientEncoding,
        param_types: &[u8],
    ) -> Rc<Statement> {
        if let Some(s) = self.get(query, encoding, param_types) {
            return s.clone();
        }
        if self.count >= MAX_STATEMENTS {
            self.by_query.clear();
            self.count = 0;
        }
        let id = self.next_id;
        self.next_id += 1;
        let read_in = (!query.is_ascii()).then_some(encoding);
        let stmt = Rc::new(Statement {
            id,
            server_name: format!("sluice_{}_{}", self.core, id),
            query: query.into(),
            read_in,
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
        let utf8 = ClientEncoding::Utf8;
        let a = r.intern(b"select $1", utf8, b"\0\x01\0\0\0\x17");
        let b = r.intern(b"select $1", utf8, b"\0\x01\0\0\0\x17");
        let c = r.intern(b"select $1", utf8, b"\0\0");
        assert!(Rc::ptr_eq(&a, &b));
        assert_ne!(a.id, c.id);
        assert_eq!(a.server_name, format!("sluice_3_{}", a.id));
        let latin1 = ClientEncoding::from_name("LATIN1");
        assert!(Rc::ptr_eq(
            &a,
            &r.intern(b"select $1", latin1, b"\0\x01\0\0\0\x17")
        ));
    }

    #[test]
    fn same_bytes_in_another_encoding_are_another_statement() {
        let mut r = StatementRegistry::new(0);
        let latin1 = ClientEncoding::from_name("LATIN1");
        let a = r.intern(b"select '\xc3\xa9'", ClientEncoding::Utf8, b"\0\0");
        let b = r.intern(b"select '\xc3\xa9'", latin1, b"\0\0");
        assert_ne!(a.id, b.id);
        assert!(a.reads_alike(ClientEncoding::Utf8) && !a.reads_alike(latin1));
    }
}
