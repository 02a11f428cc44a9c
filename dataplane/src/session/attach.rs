//! The server connection a session holds: taking one from the pool, parking its read half
//! while it owes nothing, returning it, losing it, and settling it when the session ends.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::rc::Rc;

use bytes::BytesMut;
use sluice_pgwire::{backend as bmsg, encode, sqlstate};

use super::relay::shutdown_fd;
use super::Session;
use crate::backend::{ServerConn, ServerRead, ServerState, ServerWrite};
use crate::error::Fatal;
use crate::tracker::{Delivery, Request};

/// The server connection a session holds.
pub(super) struct Attached {
    pub(super) state: ServerState,
    /// `None` while the client reader is writing.
    pub(super) write: Option<ServerWrite>,
    /// The read half, while no server reader runs (the server owes nothing).
    pub(super) parked: Option<(ServerRead, BytesMut)>,
    /// Raw fd of the server socket, to shut it down when abandoning a busy connection.
    fd: RawFd,
}

/// The session's side of its server connection: the one held, and what is known of it.
pub(super) struct ServerSlot {
    pub(super) attached: Option<Attached>,
    /// Bumped on every attach, so a server reader can tell its connection from a later one.
    pub(super) generation: u64,
    /// The last server message was ReadyForQuery, with this status.
    pub(super) ready: Option<u8>,
    /// Session mode: the reset query was sent by `finish`, so the connection is clean once
    /// the server reader has read its answer.
    reset_sent: bool,
    pub(super) last_forwarded_tag: u8,
    /// Session parameters from the client's startup packet, set on every server connection
    /// it gets (those PostgreSQL reports are followed in `view` instead).
    pub(super) wanted: Rc<Vec<(String, String)>>,
    /// Every reported parameter as the client was last told it (ParameterStatus): at
    /// startup, then each one forwarded to it. A server handed to the client is made to
    /// match, so the client's own SETs of these follow it from server to server.
    pub(super) view: Rc<HashMap<String, String>>,
}

impl ServerSlot {
    pub(super) fn new(wanted: Vec<(String, String)>, view: HashMap<String, String>) -> Self {
        Self {
            attached: None,
            generation: 0,
            ready: Some(b'I'),
            reset_sent: false,
            last_forwarded_tag: 0,
            wanted: Rc::new(wanted),
            view: Rc::new(view),
        }
    }

    /// Records that the attached server has statement `id` prepared; false when it had it
    /// already.
    pub(super) fn mark_prepared(&mut self, id: u64) -> bool {
        self.attached
            .as_mut()
            .is_none_or(|a| a.state.prepared.insert(id))
    }

    /// Forgets statements the attached server turned out not to have (an injected Parse
    /// failed or was skipped).
    pub(super) fn unprepared(&mut self, ids: &mut Vec<u64>) {
        if let Some(a) = self.attached.as_mut() {
            for id in ids.drain(..) {
                a.state.prepared.remove(&id);
            }
        }
    }
}

impl Session {
    /// Takes a server from the pool when the session holds none, with the client's session
    /// parameters applied. Returns false (the client told) when there is none to be had.
    pub(super) async fn ensure_attached(self: &Rc<Self>) -> bool {
        if self.st.borrow().server.attached.is_some() {
            return true;
        }
        match self.pool.acquire().await {
            Ok(mut conn) => {
                let (wanted, view) = {
                    let st = self.st.borrow();
                    (st.server.wanted.clone(), st.server.view.clone())
                };
                if let Err(e) = conn.hand_to(Some(self.owner), &wanted, &view).await {
                    tracing::warn!(peer = %self.peer, error = %e, "could not prepare a server connection");
                    self.pool.broken_or_close(conn, &e);
                    self.fatal(Fatal::from(&e));
                    return false;
                }
                self.attach(conn);
                true
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, subject = %self.subject, error = %e, "no server connection for a client");
                self.fatal(Fatal::from(&e));
                false
            }
        }
    }

    pub(super) fn attach(self: &Rc<Self>, conn: ServerConn) {
        let ServerConn {
            read,
            rbuf,
            write,
            state,
        } = conn;
        let fd = state.fd;
        self.slot.set(Some(state.key));
        self.ctx.metrics.server_checkouts.inc();
        let mut st = self.st.borrow_mut();
        st.server.generation += 1;
        st.server.attached = Some(Attached {
            state,
            write: Some(write),
            parked: Some((read, rbuf)),
            fd,
        });
    }

    /// Starts a server reader if the server's read half is parked.
    pub(super) fn unpark(self: &Rc<Self>) {
        let mut st = self.st.borrow_mut();
        let generation = st.server.generation;
        if let Some((read, rbuf)) = st.server.attached.as_mut().and_then(|a| a.parked.take()) {
            drop(st);
            monoio::spawn(self.clone().server_reader(read, rbuf, generation));
        }
    }

    /// Whether the attached server can go back to the pool now.
    fn releasable(&self, st: &super::State) -> bool {
        st.tracker.is_idle()
            && st.server.ready == Some(b'I')
            && (!self.keeps_server(st) || st.out.closing)
    }

    /// Returns the attached server to the pool if it is parked, writable and idle.
    pub(super) fn release_if_idle(self: &Rc<Self>) {
        let mut st = self.st.borrow_mut();
        if !self.releasable(&st) {
            return;
        }
        let conn = match st.server.attached.take() {
            Some(Attached {
                state,
                write: Some(write),
                parked: Some((read, rbuf)),
                ..
            }) => ServerConn {
                read,
                rbuf,
                write,
                state,
            },
            other => {
                // Being written to or read from: not yet.
                st.server.attached = other;
                return;
            }
        };
        let reset_sent = std::mem::take(&mut st.server.reset_sent);
        // A pinned server goes back reset, as in session pooling.
        let keeps_server = self.keeps_server(&st);
        drop(st);
        self.slot.set(None);
        if keeps_server && !reset_sent {
            let pool = self.pool.clone();
            monoio::spawn(async move { pool.release_after_reset(conn).await });
        } else {
            // What the reset query undid, the server reader saw in its CommandComplete.
            self.pool.release(conn);
        }
    }

    /// The server connection failed: forget it and end the session with an error.
    pub(super) fn server_lost(&self, generation: u64, why: &str) {
        let mut st = self.st.borrow_mut();
        if st.server.generation != generation || st.server.attached.is_none() {
            return;
        }
        st.server.attached = None;
        st.tracker.reset();
        let told = st.server.last_forwarded_tag == bmsg::ERROR_RESPONSE;
        let abandoned = st.out.closing;
        drop(st);
        // A client reader waiting for a guarded write's answer stops waiting.
        self.wake.guard();
        self.slot.set(None);
        if abandoned {
            // finish() shut the socket down on purpose.
            self.pool.close_abandoned();
            return;
        }
        self.pool.broken(None);
        tracing::warn!(peer = %self.peer, subject = %self.subject, why, "server connection lost");
        if told {
            self.st.borrow_mut().out.closing = true;
            self.wake.writer();
        } else {
            self.fatal(Fatal::new(
                sqlstate::CONNECTION_FAILURE,
                "server connection lost; the session is closed",
            ));
        }
    }

    /// After the client left: once the server is parked, return it or close it.
    pub(super) fn finish_if_closing(self: &Rc<Self>) {
        let mut st = self.st.borrow_mut();
        if !st.out.closing {
            return;
        }
        let Some(a) = st.server.attached.as_ref() else {
            return;
        };
        if a.parked.is_none() || a.write.is_none() {
            return;
        }
        if self.releasable(&st) {
            drop(st);
            self.release_if_idle();
            return;
        }
        // Idle inside a transaction (or failed one): not reusable as it is.
        st.server.attached = None;
        drop(st);
        self.slot.set(None);
        self.pool.close_abandoned();
    }

    /// The client reader is done: stop writing, and settle the server connection.
    pub(super) async fn finish(self: &Rc<Self>) {
        {
            let mut st = self.st.borrow_mut();
            st.out.closing = true;
            st.stmts.pooled.clear();
        }
        self.wake.writer_and_server();
        let busy_fd = {
            let st = self.st.borrow();
            // A reader that owes nothing parks (and settles the server) as soon as it runs,
            // without reading: e.g. one spawned for messages that then failed validation. Shut
            // its socket down and it would park a dead connection back into the pool.
            let owes_answers = !(st.tracker.is_idle() && st.server.ready.is_some());
            st.server
                .attached
                .as_ref()
                .filter(|a| a.parked.is_none() && owes_answers)
                .map(|a| a.fd)
        };
        if busy_fd.is_none() && self.reset_through_reader().await {
            return;
        }
        match busy_fd {
            None => self.finish_if_closing(),
            Some(fd) => {
                // The server is still answering: cancel the query and stop reading; the
                // connection cannot be trusted back into the pool mid-answer.
                if let Some(key) = self.slot.get() {
                    monoio::spawn(async move {
                        let _ = crate::backend::send_cancel(key).await;
                    });
                }
                shutdown_fd(fd);
            }
        }
    }

    /// Session mode or a pinned client, client gone, server idle with its reader still
    /// reading (blocked on a read it must not drop): send a ROLLBACK when the client left a
    /// transaction open, then the reset query (or an empty one), so the reader gets answers,
    /// swallows them and parks, and the connection goes back to the pool clean. Returns false
    /// if there was nothing to do.
    async fn reset_through_reader(self: &Rc<Self>) -> bool {
        let (generation, write, rollback) = {
            let mut guard = self.st.borrow_mut();
            let st = &mut *guard;
            let idle = st.tracker.is_idle() && st.server.ready.is_some();
            let rollback = st.server.ready != Some(b'I');
            let keeps_server = self.keeps_server(st);
            let generation = st.server.generation;
            let Some(a) = st.server.attached.as_mut().filter(|a| a.parked.is_none()) else {
                return false;
            };
            if !keeps_server || !idle {
                return false;
            }
            let Some(w) = a.write.take() else {
                return false;
            };
            let mut ignored = (BytesMut::new(), Vec::new());
            for _ in 0..1 + usize::from(rollback) {
                st.tracker.push(
                    Request::Simple,
                    Delivery::Swallow,
                    None,
                    &mut ignored.0,
                    &mut ignored.1,
                );
            }
            st.server.ready = None;
            st.server.reset_sent = true;
            (generation, w, rollback)
        };
        let mut q = BytesMut::new();
        if rollback {
            // Its own message: DISCARD ALL may not run in the implicit transaction of a
            // multi-statement query.
            encode::query(&mut q, "ROLLBACK");
        }
        encode::query(&mut q, &self.pool.config().reset_query);
        self.write_taken(generation, write, q.freeze()).await;
        // The reader parks once it has read the answer, and settles the connection.
        self.finish_if_closing();
        true
    }
}
