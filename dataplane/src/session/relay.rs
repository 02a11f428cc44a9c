//! The session's three tasks (client reader, server reader, client writer), the ordered
//! client queue they share, and its backpressure.

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use monoio::io::{OwnedReadHalf, OwnedWriteHalf};
use sluice_pgwire::frontend;

use super::Session;
use crate::backend::{ServerRead, ServerWrite};
use crate::io::{fill, fill_up_to, write_all, IDLE_READ_SIZE};
use crate::stream::ClientStream;

/// Queued bytes for the client above which the readers stop reading.
const HIGH_WATER: usize = 256 * 1024;
/// Queued bytes above which the writer sends chunks one by one instead of joining them.
const JOIN_BELOW: usize = 64 * 1024;

type ClientRead = OwnedReadHalf<ClientStream>;
type ClientWrite = OwnedWriteHalf<ClientStream>;

/// A one-waiter wake-up flag for tasks on the same thread.
#[derive(Default)]
pub(super) struct Notify {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Notify {
    fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn notified(&self) -> Notified<'_> {
        Notified(self)
    }
}

struct Notified<'a>(&'a Notify);

impl Future for Notified<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.set.replace(false) {
            Poll::Ready(())
        } else {
            self.0.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        }
    }
}

/// What wakes each of the session's tasks (each [`Notify`] has one waiter).
#[derive(Default)]
pub(super) struct Wakers {
    /// The client writer: there is something to write, or the session is closing.
    writer: Notify,
    /// The server reader: the client queue drained below the high-water mark.
    server_room: Notify,
    /// The same for the client reader.
    client_room: Notify,
    /// The client reader: the guarded write's answer came (see [`super::guard`]).
    guard: Notify,
}

impl Wakers {
    /// Wakes every task, so each sees the session closing.
    pub(super) fn all(&self) {
        self.writer.notify();
        self.server_room.notify();
        self.client_room.notify();
        self.guard.notify();
    }

    /// Wakes the client reader waiting for a guarded write's answer.
    pub(super) fn guard(&self) {
        self.guard.notify();
    }

    /// Until [`Wakers::guard`] (or [`Wakers::all`]) is called.
    pub(super) async fn guard_settled(&self) {
        self.guard.notified().await;
    }

    /// Wakes the writer and the server reader (the client reader is done).
    pub(super) fn writer_and_server(&self) {
        self.writer.notify();
        self.server_room.notify();
    }

    /// Wakes the writer.
    pub(super) fn writer(&self) {
        self.writer.notify();
    }
}

/// The ordered queue of bytes for the client, drained by the client writer alone.
#[derive(Default)]
pub(super) struct Outbox {
    queue: VecDeque<Bytes>,
    /// Bytes queued and not yet written.
    bytes: usize,
    /// No more writes to the client: it left, or the session is ending.
    pub(super) closing: bool,
}

impl Outbox {
    /// Whether a reader should wait before reading more (the client is not reading).
    fn is_full(&self) -> bool {
        !self.closing && self.bytes > HIGH_WATER
    }

    /// The next bytes to write: one chunk, or several small ones joined into one write.
    fn next_write(&mut self) -> Option<Bytes> {
        let n = self.queue.len();
        if n == 0 {
            None
        } else if n == 1 || self.bytes > JOIN_BELOW {
            self.queue.pop_front()
        } else {
            let mut joined = BytesMut::with_capacity(self.bytes);
            for c in self.queue.drain(..) {
                joined.extend_from_slice(&c);
            }
            Some(joined.freeze())
        }
    }

    /// `len` bytes were written, or the write failed and nothing more will be.
    fn written(&mut self, len: usize, failed: bool) {
        self.bytes = self.bytes.saturating_sub(len);
        if failed {
            self.closing = true;
            self.queue.clear();
            self.bytes = 0;
        }
    }
}

/// Which reader waits for room in the client queue.
#[derive(Clone, Copy)]
enum Reader {
    Client,
    Server,
}

impl Session {
    /// Queues bytes for the client (nothing once the session is closing).
    pub(super) fn push_out(&self, out: &mut Outbox, chunk: Bytes) {
        if out.closing || chunk.is_empty() {
            return;
        }
        out.bytes += chunk.len();
        out.queue.push_back(chunk);
        self.wake.writer.notify();
    }

    /// The backpressure: waits while the client queue is above its high-water mark.
    async fn wait_for_room(&self, reader: Reader) {
        let waker = match reader {
            Reader::Client => &self.wake.client_room,
            Reader::Server => &self.wake.server_room,
        };
        while self.st.borrow().out.is_full() {
            waker.notified().await;
        }
    }

    /// Reads the client until it leaves or the session ends.
    pub(super) async fn client_reader(self: Rc<Self>, mut read: ClientRead, mut buf: BytesMut) {
        let mut copy_skip = 0usize;
        loop {
            if self.st.borrow().out.closing {
                return;
            }
            if buf.is_empty() || (copy_skip == 0 && self.need_more(&buf)) {
                self.awaiting_client.set(buf.is_empty() && copy_skip == 0);
                // An idle point: a draining gateway closes the session here.
                self.close_if_drained();
                let filled = if self.awaiting_client.get() {
                    // Waiting for the next request: a small buffer, not a large one kept
                    // by the read for as long as the client is idle.
                    if buf.capacity() > IDLE_READ_SIZE {
                        buf = BytesMut::new();
                    }
                    fill_up_to(&mut read, &mut buf, IDLE_READ_SIZE).await
                } else {
                    fill(&mut read, &mut buf).await
                };
                self.awaiting_client.set(false);
                match filled {
                    Ok(0) | Err(_) => return,
                    Ok(_) => self.sent_anything.set(true),
                }
                continue;
            }
            if self.st.borrow().out.closing {
                return;
            }
            if copy_skip == 0 && buf[0] == frontend::TERMINATE {
                return;
            }
            // The policy and catalog first: these awaits must not come between attaching a
            // server and processing (the server reader may return an idle server meanwhile).
            self.refresh_policy().await;
            // Answers the gateway gives itself (synthesized ParseComplete, CloseComplete) go
            // to the client queue too: stop reading while the client does not read.
            self.wait_for_room(Reader::Client).await;
            if self.st.borrow().out.closing {
                return;
            }
            // A server for whatever these messages need, unless the gateway answers them all.
            if !self.answers_without_server(&buf, copy_skip) {
                if !self.ensure_attached().await {
                    return;
                }
                self.unpark();
            }
            let (chunks, terminated) = match self.process_client(&mut buf, &mut copy_skip) {
                Ok(c) => c,
                Err(f) => {
                    self.ctx.metrics.protocol_errors.inc();
                    tracing::info!(peer = %self.peer, error = %f.message, "client protocol error");
                    self.fatal(f);
                    return;
                }
            };
            if !self.write_server(chunks).await || terminated {
                // On a failed write, server_lost() has told the client.
                return;
            }
            // A write limited by max_affected_rows: what follows it waits for its count.
            if !self.settle_guard().await {
                return;
            }
            let need = self.st.borrow_mut().review.needed.take();
            if let Some(need) = need {
                self.review(need).await;
            }
        }
    }

    /// Writes to the attached server. Returns false when the session is over.
    pub(super) async fn write_server(self: &Rc<Self>, chunks: Vec<Bytes>) -> bool {
        for chunk in chunks {
            let (generation, write) = {
                let mut st = self.st.borrow_mut();
                let generation = st.server.generation;
                match st.server.attached.as_mut().and_then(|a| a.write.take()) {
                    Some(w) => (generation, w),
                    None => return false,
                }
            };
            if !self.write_taken(generation, write, chunk).await {
                return false;
            }
        }
        self.release_if_idle();
        !self.st.borrow().out.closing
    }

    /// Writes `chunk` with the write half taken out of the attached server, puts the half
    /// back (unless the server changed meanwhile), and reports a failed write as a lost
    /// server. Returns whether the write succeeded.
    pub(super) async fn write_taken(
        &self,
        generation: u64,
        mut write: ServerWrite,
        chunk: Bytes,
    ) -> bool {
        let result = write_all(&mut write, chunk).await;
        {
            let mut st = self.st.borrow_mut();
            if st.server.generation == generation {
                if let Some(a) = st.server.attached.as_mut() {
                    a.write = Some(write);
                }
            }
        }
        match result {
            Ok(()) => true,
            Err(e) => {
                self.server_lost(generation, &format!("write failed: {e}"));
                false
            }
        }
    }

    /// Relays the server's answers until it owes nothing more, then parks (or releases).
    pub(super) async fn server_reader(
        self: Rc<Self>,
        mut read: ServerRead,
        mut buf: BytesMut,
        generation: u64,
    ) {
        let mut skip = 0usize;
        let mut skip_forward = true;
        loop {
            match self.process_server(&mut buf, &mut skip, &mut skip_forward, generation) {
                Ok(None) => {}
                Ok(Some(seen)) => {
                    // A result the catalog cannot resolve: reload, then process it again.
                    self.reload_catalog(seen).await;
                    continue;
                }
                Err(e) => {
                    self.server_lost(generation, &format!("protocol error: {e}"));
                    return;
                }
            }
            if skip == 0 && buf.is_empty() {
                // An idle point once the server's answers are queued (the client reader
                // already waits): a draining gateway closes the session here.
                self.close_if_drained();
            }
            {
                let mut guard = self.st.borrow_mut();
                let st = &mut *guard;
                if st.server.generation != generation {
                    return;
                }
                // Session mode (and a pinned client) keeps reading an idle server while its
                // client is there, so notifications and server-initiated messages reach the
                // client at once.
                let may_park = !self.keeps_server(st) || st.out.closing;
                let Some(a) = st.server.attached.as_mut() else {
                    return;
                };
                if may_park
                    && skip == 0
                    && buf.is_empty()
                    && st.tracker.is_idle()
                    && st.server.ready.is_some()
                {
                    a.parked = Some((read, buf));
                    drop(guard);
                    self.release_if_idle();
                    self.finish_if_closing();
                    return;
                }
            }
            self.wait_for_room(Reader::Server).await;
            match fill(&mut read, &mut buf).await {
                Ok(0) => {
                    self.server_lost(generation, "server closed the connection");
                    return;
                }
                Err(e) => {
                    self.server_lost(generation, &format!("read failed: {e}"));
                    return;
                }
                Ok(_) => {}
            }
        }
    }
}

/// The only writer to the client: drains the session's queue in order.
pub(super) async fn client_writer(s: Rc<Session>, mut write: ClientWrite) {
    loop {
        let next = s.st.borrow_mut().out.next_write();
        match next {
            Some(chunk) => {
                let len = chunk.len();
                let failed = write_all(&mut write, chunk).await.is_err();
                s.st.borrow_mut().out.written(len, failed);
                s.wake.server_room.notify();
                s.wake.client_room.notify();
                if failed {
                    shutdown_fd(s.client_fd);
                    return;
                }
            }
            None => {
                if s.st.borrow().out.closing {
                    shutdown_fd(s.client_fd);
                    return;
                }
                s.wake.writer.notified().await;
            }
        }
    }
}

/// Shuts a socket down both ways, so a read in flight on it returns.
pub(super) fn shutdown_fd(fd: RawFd) {
    // SAFETY: shutdown(2) on a descriptor we own and have not closed; it only changes the
    // socket's state, and the owning half closes the descriptor later as usual.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_chunks_are_joined_and_large_ones_go_alone() {
        let mut out = Outbox::default();
        for c in [&b"ab"[..], b"cd", b"e"] {
            out.bytes += c.len();
            out.queue.push_back(Bytes::copy_from_slice(c));
        }
        assert_eq!(out.next_write().as_deref(), Some(&b"abcde"[..]));
        out.written(5, false);
        assert_eq!(out.bytes, 0);
        assert!(out.next_write().is_none());
        let big = Bytes::from(vec![0u8; JOIN_BELOW + 1]);
        out.bytes += big.len() + 1;
        out.queue.push_back(big.clone());
        out.queue.push_back(Bytes::from_static(b"x"));
        assert_eq!(out.next_write(), Some(big));
    }

    #[test]
    fn full_above_the_high_water_mark_unless_closing() {
        let mut out = Outbox {
            bytes: HIGH_WATER + 1,
            ..Outbox::default()
        };
        assert!(out.is_full());
        out.written(1, false);
        assert!(!out.is_full(), "at the mark is not above it");
        out.bytes = HIGH_WATER + 1;
        out.closing = true;
        assert!(!out.is_full(), "a closing session never waits");
        out.closing = false;
        out.queue.push_back(Bytes::from_static(b"x"));
        out.written(1, true);
        assert!(out.closing && out.queue.is_empty() && out.bytes == 0);
    }
}
