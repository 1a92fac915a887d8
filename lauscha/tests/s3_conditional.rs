//! Conditional PUT (If-None-Match: *, If-Match) through aws-sdk-s3, decided in the
//! metadata state machine: of racing writers exactly one wins.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_and_if_none_match_guard_a_put() {
    let dev = Dev::start(&[]);
    let s3 = dev.client();
    must_create_bucket(&s3, "cond").await;
    let put = |key: &'static str, body: Vec<u8>| {
        s3.put_object().bucket("cond").key(key).body(body.into())
    };

    let first = put("k", payload(1, 20_000))
        .if_none_match("*")
        .send()
        .await
        .unwrap();
    let etag1 = first.e_tag().unwrap().to_string();
    let (code, status) = error_of(put("k", payload(2, 20_000)).if_none_match("*").send().await);
    assert_eq!((code.as_str(), status), ("PreconditionFailed", 412));

    let second = put("k", payload(3, 30))
        .if_match(&etag1)
        .send()
        .await
        .unwrap();
    let etag2 = second.e_tag().unwrap().to_string();
    assert_ne!(etag1, etag2);
    let (code, status) = error_of(put("k", payload(4, 30)).if_match(&etag1).send().await);
    assert_eq!((code.as_str(), status), ("PreconditionFailed", 412));
    assert_eq!(must_get(&s3, "cond", "k").await, payload(3, 30));

    let (code, status) = error_of(put("absent", payload(5, 30)).if_match(&etag1).send().await);
    assert_eq!((code.as_str(), status), ("NoSuchKey", 404));
    let (code, status) = error_of(put("k", payload(6, 30)).if_none_match(&etag2).send().await);
    assert_eq!((code.as_str(), status), ("NotImplemented", 501));
    let (code, status) = error_of(
        put("k", payload(7, 30))
            .if_none_match("*")
            .if_match(&etag2)
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("InvalidArgument", 400));
    assert_eq!(must_get(&s3, "cond", "k").await, payload(3, 30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_racing_conditional_writers_exactly_one_wins_1000_times() {
    let dev = Dev::start(&[]);
    let s3 = dev.client();
    must_create_bucket(&s3, "race").await;
    for race in 0..1000u64 {
        let key = format!("race-{race:04}");
        // Every tenth race stores erasure-coded bytes, the rest inline bytes.
        let size = if race % 10 == 0 { 20_000 } else { 100 };
        let (a, b) = (payload(2 * race, size), payload(2 * race + 1, size));
        let send = |body: Vec<u8>| {
            s3.put_object()
                .bucket("race")
                .key(&key)
                .if_none_match("*")
                .body(body.into())
                .send()
        };
        let (ra, rb) = tokio::join!(send(a.clone()), send(b.clone()));
        let winner = match (ra, rb) {
            (Ok(_), Err(e)) => {
                assert_eq!(
                    error_of::<_, ()>(Err(e)),
                    ("PreconditionFailed".into(), 412)
                );
                a
            }
            (Err(e), Ok(_)) => {
                assert_eq!(
                    error_of::<_, ()>(Err(e)),
                    ("PreconditionFailed".into(), 412)
                );
                b
            }
            (ra, rb) => panic!("race {race}: both or neither won: {ra:?} / {rb:?}"),
        };
        assert!(
            must_get(&s3, "race", &key).await == winner,
            "race {race}: the loser's bytes"
        );
    }
}
