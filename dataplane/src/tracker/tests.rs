//! Unit tests of the response tracker, on tag sequences.

use super::*;

fn run(t: &mut Tracker, tags: &[u8]) -> (Vec<Verdict>, BytesMut, Vec<u64>) {
    let mut out = BytesMut::new();
    let mut unprepared = Vec::new();
    let v = tags
        .iter()
        .map(|&tag| t.on_server(tag, &mut out, &mut unprepared))
        .collect();
    (v, out, unprepared)
}

fn push(t: &mut Tracker, r: Request, d: Delivery, id: Option<u64>) -> BytesMut {
    let mut out = BytesMut::new();
    let mut unprepared = Vec::new();
    t.push(r, d, id, &mut out, &mut unprepared);
    assert!(unprepared.is_empty());
    out
}

use Delivery::*;
use Request::*;
use Verdict::{Drop, Forward as Fwd};

#[test]
fn simple_query_is_idle_after_ready() {
    let mut t = Tracker::new();
    push(&mut t, Simple, Forward, None);
    let (v, _, _) = run(&mut t, b"TDDCE");
    assert!(v.iter().all(|v| *v == Fwd));
    assert!(
        !t.is_idle(),
        "an error inside a simple query does not end it"
    );
    run(&mut t, b"Z");
    assert!(t.is_idle());
}

#[test]
fn extended_batch() {
    let mut t = Tracker::new();
    for r in [Parse, Bind, DescribePortal, Execute, Sync] {
        push(&mut t, r, Forward, None);
    }
    run(&mut t, b"12TDDC");
    assert_eq!(t.pending(), 1);
    run(&mut t, b"Z");
    assert!(t.is_idle());
}

#[test]
fn describe_statement_waits_for_row_description() {
    let mut t = Tracker::new();
    push(&mut t, DescribeStatement, Forward, None);
    push(&mut t, Sync, Forward, None);
    run(&mut t, b"t");
    assert_eq!(t.pending(), 2);
    run(&mut t, b"n");
    assert_eq!(t.pending(), 1);
}

#[test]
fn injected_parse_is_swallowed_but_its_error_is_not() {
    let mut t = Tracker::new();
    push(&mut t, Parse, Swallow, Some(7));
    push(&mut t, Bind, Forward, None);
    push(&mut t, Execute, Forward, None);
    push(&mut t, Sync, Forward, None);
    let (v, _, _) = run(&mut t, b"12CZ");
    assert_eq!(v, vec![Drop, Fwd, Fwd, Fwd]);

    let mut t = Tracker::new();
    push(&mut t, Parse, Swallow, Some(7));
    push(&mut t, Bind, Forward, None);
    push(&mut t, Sync, Forward, None);
    let (v, _, unprepared) = run(&mut t, b"EZ");
    assert_eq!(v, vec![Fwd, Fwd]);
    assert_eq!(unprepared, vec![7]);
    assert!(t.is_idle());
}

#[test]
fn synthesized_parse_complete_lands_in_order() {
    let mut t = Tracker::new();
    // Nothing in flight: the synthetic answer is due at once.
    let out = push(&mut t, Parse, Synthesize, Some(1));
    assert_eq!(&out[..], b"1\0\0\0\x04");
    assert!(t.is_idle());

    // Behind an Execute: due only once the Execute is answered.
    push(&mut t, Execute, Forward, None);
    let out = push(&mut t, Parse, Synthesize, Some(1));
    assert!(out.is_empty());
    push(&mut t, Bind, Forward, None);
    push(&mut t, Sync, Forward, None);
    let (_, out, _) = run(&mut t, b"D");
    assert!(out.is_empty());
    let (_, out, _) = run(&mut t, b"C");
    assert_eq!(&out[..], b"1\0\0\0\x04");
    run(&mut t, b"2Z");
    assert!(t.is_idle());
}

#[test]
fn error_skips_to_sync_and_drops_synthetic_answers() {
    let mut t = Tracker::new();
    push(&mut t, Bind, Forward, None);
    push(&mut t, Execute, Forward, None);
    push(&mut t, Parse, Synthesize, Some(3));
    push(&mut t, Parse, Swallow, Some(4));
    push(&mut t, Sync, Forward, None);
    let (v, out, unprepared) = run(&mut t, b"E");
    assert_eq!(v, vec![Fwd]);
    assert!(
        out.is_empty(),
        "the server skipped the Parse: no ParseComplete"
    );
    assert_eq!(unprepared, vec![4]);
    assert_eq!(t.pending(), 1);
    run(&mut t, b"Z");
    assert!(t.is_idle());
}

#[test]
fn error_before_sync_was_sent_discards_until_sync() {
    let mut t = Tracker::new();
    push(&mut t, Bind, Forward, None);
    run(&mut t, b"E");
    assert!(t.is_idle());
    let mut out = BytesMut::new();
    let mut unprepared = Vec::new();
    t.push(Parse, Swallow, Some(9), &mut out, &mut unprepared);
    t.push(Execute, Forward, None, &mut out, &mut unprepared);
    assert_eq!(unprepared, vec![9]);
    assert!(t.is_idle());
    t.push(Sync, Forward, None, &mut out, &mut unprepared);
    assert_eq!(t.pending(), 1);
    run(&mut t, b"Z");
    assert!(t.is_idle());
}

#[test]
fn a_stand_in_error_is_replaced_and_the_rest_is_the_servers() {
    let ours = Bytes::from_static(b"E\0\0\0\x04");
    // Simple query: error replaced, ReadyForQuery forwarded.
    let mut t = Tracker::new();
    t.push_replacing(Simple, ours.clone());
    let (v, _, _) = run(&mut t, b"EZ");
    assert_eq!(v, vec![Verdict::Replace(ours.clone()), Fwd]);
    assert!(t.is_idle());

    // Extended: the stand-in Parse fails, the server skips to Sync.
    let mut t = Tracker::new();
    t.push_replacing(Parse, ours.clone());
    push(&mut t, Bind, Forward, None);
    push(&mut t, Execute, Forward, None);
    push(&mut t, Sync, Forward, None);
    let (v, _, _) = run(&mut t, b"EZ");
    assert_eq!(v, vec![Verdict::Replace(ours), Fwd]);
    assert!(t.is_idle());
}

#[test]
fn async_messages_are_not_answers() {
    let mut t = Tracker::new();
    push(&mut t, Parse, Forward, None);
    run(&mut t, b"NSA");
    assert_eq!(t.pending(), 1);
    let (v, _, _) = run(&mut t, b"A");
    assert_eq!(v, vec![Fwd]);
}

#[test]
fn syncs_sent_during_copy_in_get_no_answer() {
    // tokio-postgres: Bind, Execute, Sync, then the data once CopyInResponse arrived.
    for end in [b'C', b'E'] {
        let mut t = Tracker::new();
        for r in [Bind, Execute, Sync] {
            push(&mut t, r, Forward, None);
        }
        run(&mut t, b"2G");
        push(&mut t, Sync, Forward, None); // ignored by the server in copy-in mode
        push(&mut t, CopyEnd, Forward, None);
        push(&mut t, Sync, Forward, None);
        // CommandComplete after CopyDone, or an error after CopyFail.
        run(&mut t, &[end]);
        assert_eq!(t.pending(), 1);
        run(&mut t, b"Z");
        assert!(t.is_idle(), "after {}", end as char);
    }

    // The same messages pipelined before the server's CopyInResponse.
    let mut t = Tracker::new();
    for r in [Bind, Execute, Sync, CopyEnd, Sync] {
        push(&mut t, r, Forward, None);
    }
    run(&mut t, b"2GC");
    assert_eq!(t.pending(), 1);
    run(&mut t, b"Z");
    assert!(t.is_idle());

    // COPY by simple query: nothing to forget.
    let mut t = Tracker::new();
    push(&mut t, Simple, Forward, None);
    run(&mut t, b"G");
    push(&mut t, CopyEnd, Forward, None);
    run(&mut t, b"C");
    assert_eq!(t.pending(), 1);
    run(&mut t, b"Z");
    assert!(t.is_idle());

    // A COPY that fails before copy-in mode leaves no marker behind.
    let mut t = Tracker::new();
    push(&mut t, Simple, Forward, None);
    push(&mut t, CopyEnd, Forward, None);
    run(&mut t, b"EZ");
    assert!(t.is_idle());
}

#[test]
fn error_at_sync_is_not_a_skip() {
    // A commit failing at Sync time: error then ReadyForQuery.
    let mut t = Tracker::new();
    push(&mut t, Sync, Forward, None);
    run(&mut t, b"E");
    assert_eq!(t.pending(), 1);
    run(&mut t, b"Z");
    assert!(t.is_idle());
}

#[test]
fn job_tags_follow_the_answers() {
    let mut t = Tracker::new();
    push(&mut t, Parse, Forward, None);
    push(&mut t, Bind, Forward, None);
    push(&mut t, DescribePortal, Swallow, None);
    assert!(t.tag_last(7));
    assert!(!t.tag_last(8), "already tagged");
    push(&mut t, Execute, Forward, None);
    assert!(t.tag_last(9));
    push(&mut t, Sync, Forward, None);
    run(&mut t, b"12");
    assert_eq!(t.head_job(), 7);
    run(&mut t, b"T");
    assert_eq!(t.head_job(), 9);
    assert!(!t.has_job(7) && t.has_job(9));
    run(&mut t, b"DDC");
    assert!(!t.has_job(9));
    run(&mut t, b"Z");
    assert!(t.is_idle());

    // A request the server will skip (after an error, before Sync) takes no tag, and a
    // synthesized answer never does.
    let mut t = Tracker::new();
    push(&mut t, Parse, Forward, None);
    run(&mut t, b"E");
    push(&mut t, Execute, Forward, None);
    assert!(!t.tag_last(1));
    push(&mut t, Sync, Forward, None);
    push(&mut t, Close, Synthesize, None);
    assert!(!t.tag_last(2));

    // A failed request and those skipped after it are reported by tag.
    let mut t = Tracker::new();
    push(&mut t, Parse, Forward, None);
    assert!(t.tag_last(5));
    push(&mut t, Bind, Forward, None);
    push(&mut t, Execute, Forward, None);
    assert!(t.tag_last(6));
    push(&mut t, Sync, Forward, None);
    run(&mut t, b"E");
    assert_eq!(t.take_failed_jobs(), vec![5, 6]);
    assert!(t.take_failed_jobs().is_empty());
}

#[test]
fn a_lost_server_fails_every_tagged_request_and_starts_clean() {
    let mut t = Tracker::new();
    push(&mut t, Parse, Forward, None);
    assert!(t.tag_last(3));
    push(&mut t, Execute, Forward, None);
    assert!(t.tag_last(4));
    run(&mut t, b"E");
    assert_eq!(t.take_failed_jobs(), vec![3, 4]);
    // Skipping to a Sync not sent yet: what comes before it is discarded.
    push(&mut t, Bind, Forward, None);
    push(&mut t, Execute, Forward, None);
    assert!(!t.tag_last(5));
    assert!(t.is_idle());
    push(&mut t, Sync, Forward, None);
    assert_eq!(t.pending(), 1);
    push(&mut t, Simple, Forward, None);
    assert!(t.tag_last(6));
    t.reset();
    assert!(t.is_idle());
    assert_eq!(t.take_failed_jobs(), vec![6]);
    // Nothing of the old server's state is left: a new request is recorded and answered.
    push(&mut t, Simple, Forward, None);
    assert!(t.tag_last(7));
    let (v, _, _) = run(&mut t, b"TDCZ");
    assert_eq!(v, vec![Fwd, Fwd, Fwd, Fwd]);
    assert!(t.is_idle());
    assert!(t.take_failed_jobs().is_empty());
}

#[test]
fn a_failed_simple_query_is_answered_not_failed() {
    let mut t = Tracker::new();
    push(&mut t, Simple, Forward, None);
    assert!(t.tag_last(1));
    run(&mut t, b"E");
    assert!(t.has_job(1), "its answer goes on to ReadyForQuery");
    assert!(t.take_failed_jobs().is_empty());
    run(&mut t, b"Z");
    assert!(t.is_idle());
    // No skipping after it: the next extended request is recorded.
    push(&mut t, Parse, Forward, None);
    assert!(t.tag_last(2));
}

#[test]
fn stand_ins_the_server_will_skip_are_not_recorded() {
    let mut t = Tracker::new();
    push(&mut t, Parse, Forward, None);
    run(&mut t, b"E");
    t.push_replacing(Bind, Bytes::from_static(b"ours"));
    assert!(t.is_idle(), "discarded with the rest until Sync");
    push(&mut t, Sync, Forward, None);
    assert_eq!(t.pending(), 1);
    let (v, _, _) = run(&mut t, b"Z");
    assert_eq!(v, vec![Fwd]);
    assert!(t.is_idle());
    // Once the Sync is answered the stand-in's error is the gateway's.
    t.push_replacing(Bind, Bytes::from_static(b"ours"));
    push(&mut t, Sync, Forward, None);
    let (v, _, _) = run(&mut t, b"EZ");
    assert_eq!(v, vec![Verdict::Replace(Bytes::from_static(b"ours")), Fwd]);
}

#[test]
fn parses_the_server_skips_or_fails_are_unprepared() {
    let mut t = Tracker::new();
    push(&mut t, Parse, Forward, Some(10));
    push(&mut t, Parse, Swallow, Some(11));
    push(&mut t, Bind, Forward, None);
    push(&mut t, Sync, Forward, None);
    let (_, _, unprepared) = run(&mut t, b"E");
    assert_eq!(unprepared, vec![10, 11]);
    // While skipping, a Parse pushed before the Sync goes out is unprepared at once.
    let mut t = Tracker::new();
    push(&mut t, Parse, Forward, Some(1));
    run(&mut t, b"E");
    let mut out = BytesMut::new();
    let mut unprepared = Vec::new();
    t.push(Parse, Swallow, Some(12), &mut out, &mut unprepared);
    assert_eq!(unprepared, vec![12]);
    t.push(Parse, Synthesize, Some(13), &mut out, &mut unprepared);
    assert_eq!(
        unprepared,
        vec![12],
        "a synthesized Parse needs the server to have it"
    );
}
