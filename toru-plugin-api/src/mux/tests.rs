//! The multiplexer, driven over an in-memory duplex pipe inside a `LocalSet`: the far end reads
//! and writes raw frames with the codec, so these tests see exactly what goes on the wire.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;

use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

use super::*;
use crate::codec::tokio_codec::read_frame;
use crate::protocol::{ErrorCode, KvPayload, KvReply, KvRequest, decode_host_frame};

/// Run `f` on a current_thread runtime inside a `LocalSet`, as both ends do.
fn local<F: Future<Output = ()>>(f: F) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f);
}

/// A host end over a pipe; returns it and the plugin's side of the pipe.
fn host(config: MuxConfig) -> (Rc<HostMux>, ReadHalf<DuplexStream>, WriteHalf<DuplexStream>) {
    let (near, far) = tokio::io::duplex(64 * 1024);
    let (_near_r, near_w) = tokio::io::split(near);
    let (far_r, far_w) = tokio::io::split(far);
    (Mux::start(near_w, config), far_r, far_w)
}

async fn next_host_frame(r: &mut ReadHalf<DuplexStream>) -> Frame<HostMessage> {
    let body = read_frame(r, MAX_FRAME_LEN).await.unwrap().unwrap();
    decode_host_frame(&body).unwrap()
}

/// True when `fut` is still pending after one poll.
async fn pending_after_one_poll<F: Future>(fut: &mut std::pin::Pin<&mut F>) -> bool {
    tokio::select! {
        biased;
        _ = fut.as_mut() => false,
        _ = std::future::ready(()) => true,
    }
}

#[test]
fn requests_get_their_own_replies_in_any_order() {
    local(async {
        let (mux, mut r, _w) = host(MuxConfig::host(MAX_FRAME_LEN));
        let a = mux.request(HostMessage::Ping { seq: 1 });
        let b = mux.request(HostMessage::Ping { seq: 2 });
        tokio::pin!(a, b);
        assert!(pending_after_one_poll(&mut a).await);
        assert!(pending_after_one_poll(&mut b).await);
        assert_eq!(mux.in_flight(), 2);
        let first = next_host_frame(&mut r).await;
        let second = next_host_frame(&mut r).await;
        assert_eq!(first.request_id.as_deref(), Some("h1"));
        assert_eq!(second.request_id.as_deref(), Some("h2"));
        // Answer the second first.
        for (id, seq) in [("h2", 2), ("h1", 1)] {
            let reply = Frame::new(Some(id.into()), PluginMessage::Pong { seq });
            assert!(mux.resolve(reply).is_none());
        }
        assert_eq!(a.await.unwrap().message, PluginMessage::Pong { seq: 1 });
        assert_eq!(b.await.unwrap().message, PluginMessage::Pong { seq: 2 });
        assert_eq!(mux.in_flight(), 0);
    });
}

#[test]
fn unknown_and_missing_ids_are_given_back() {
    local(async {
        let (mux, _r, _w) = host(MuxConfig::host(MAX_FRAME_LEN));
        let stray = Frame::new(Some("h99".into()), PluginMessage::Pong { seq: 9 });
        assert_eq!(mux.resolve(stray.clone()), Some(stray));
        let none = Frame::new(None, PluginMessage::Ready);
        assert_eq!(mux.resolve(none.clone()), Some(none));
    });
}

#[test]
fn the_in_flight_limit_refuses_before_sending() {
    local(async {
        let config = MuxConfig {
            max_in_flight: 2,
            ..MuxConfig::host(MAX_FRAME_LEN)
        };
        let (mux, mut r, _w) = host(config);
        let a = mux.request(HostMessage::Ping { seq: 1 });
        let b = mux.request(HostMessage::Ping { seq: 2 });
        tokio::pin!(a, b);
        assert!(pending_after_one_poll(&mut a).await);
        assert!(pending_after_one_poll(&mut b).await);
        assert_eq!(
            mux.request(HostMessage::Ping { seq: 3 }).await,
            Err(MuxError::Busy(2))
        );
        // Only the two admitted requests reached the wire.
        mux.close().await.unwrap();
        let mut seqs = Vec::new();
        while let Some(body) = read_frame(&mut r, MAX_FRAME_LEN).await.unwrap() {
            match decode_host_frame(&body).unwrap().message {
                HostMessage::Ping { seq } => seqs.push(seq),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seqs, [1, 2]);
    });
}

#[test]
fn a_dropped_request_frees_its_slot_and_its_late_reply_is_unknown() {
    local(async {
        let config = MuxConfig {
            max_in_flight: 1,
            ..MuxConfig::host(MAX_FRAME_LEN)
        };
        let (mux, mut r, _w) = host(config);
        {
            let a = mux.request(HostMessage::Ping { seq: 1 });
            tokio::pin!(a);
            assert!(pending_after_one_poll(&mut a).await);
            assert_eq!(mux.in_flight(), 1);
        } // the caller gives up (deadline, client gone)
        assert_eq!(mux.in_flight(), 0);
        let late = Frame::new(Some("h1".into()), PluginMessage::Pong { seq: 1 });
        assert!(mux.resolve(late).is_some(), "nobody waits for h1 any more");
        // The slot is free again.
        let b = mux.request(HostMessage::Ping { seq: 2 });
        tokio::pin!(b);
        assert!(pending_after_one_poll(&mut b).await);
        next_host_frame(&mut r).await;
        let sent = next_host_frame(&mut r).await;
        assert_eq!(sent.request_id.as_deref(), Some("h2"));
        mux.resolve(Frame::new(
            Some("h2".into()),
            PluginMessage::Pong { seq: 2 },
        ));
        assert!(b.await.is_ok());
    });
}

#[test]
fn the_end_of_the_connection_fails_waiting_and_later_requests() {
    local(async {
        let (mux, _r, _w) = host(MuxConfig::host(MAX_FRAME_LEN));
        let a = mux.request(HostMessage::Ping { seq: 1 });
        tokio::pin!(a);
        assert!(pending_after_one_poll(&mut a).await);
        mux.fail_all();
        assert_eq!(a.await, Err(MuxError::Closed));
        assert_eq!(mux.in_flight(), 0);
        assert!(mux.is_closed());
        assert_eq!(
            mux.request(HostMessage::Ping { seq: 2 }).await,
            Err(MuxError::Closed)
        );
    });
}

#[test]
fn a_frame_over_the_writing_limit_is_refused_and_the_writer_lives_on() {
    local(async {
        let (mux, mut r, _w) = host(MuxConfig::host(200));
        let req = KvPayload::from_reply(&KvReply::Get {
            key: "k".into(),
            value: Some("v".repeat(300)),
        });
        let err = mux.send(Some("p1".into()), HostMessage::Kv(req)).await;
        assert!(
            matches!(err, Err(MuxError::TooLarge { max: 200, .. })),
            "{err:?}"
        );
        let ping = mux.request(HostMessage::Ping { seq: 1 });
        tokio::pin!(ping);
        assert!(pending_after_one_poll(&mut ping).await);
        let sent = next_host_frame(&mut r).await;
        assert_eq!(sent.message, HostMessage::Ping { seq: 1 });
    });
}

#[test]
fn permits_limit_incoming_work_and_free_their_slot_when_dropped() {
    local(async {
        let config = MuxConfig {
            max_incoming: 2,
            ..MuxConfig::host(MAX_FRAME_LEN)
        };
        let (mux, _r, _w) = host(config);
        let a = mux.try_admit().expect("first slot");
        let b = mux.try_admit().expect("second slot");
        assert!(mux.try_admit().is_none());
        drop(a);
        let c = mux.try_admit().expect("a freed slot");
        drop((b, c));
        assert!(mux.try_admit().is_some());
    });
}

#[test]
fn undecodable_frames_with_an_id_get_an_error_reply() {
    local(async {
        let (mux, mut r, _w) = host(MuxConfig::host(MAX_FRAME_LEN));
        let with_id = crate::protocol::decode_plugin_frame(
            br#"{"type":"nonsense","timestamp":"2024-01-01T00:00:00Z","request_id":"p7","payload":{}}"#,
        )
        .unwrap_err();
        let without_id = crate::protocol::decode_plugin_frame(b"not json").unwrap_err();
        mux.reject(&without_id);
        mux.reject(&with_id);
        mux.close().await.unwrap();
        let frame = next_host_frame(&mut r).await;
        assert_eq!(frame.request_id.as_deref(), Some("p7"));
        assert!(
            matches!(&frame.message, HostMessage::Error(e) if e.code == ErrorCode::Unsupported),
            "{frame:?}"
        );
        assert!(read_frame(&mut r, MAX_FRAME_LEN).await.unwrap().is_none());
    });
}

#[test]
fn close_writes_what_was_queued_first_and_later_sends_fail() {
    local(async {
        let (mux, mut r, _w) = host(MuxConfig::host(MAX_FRAME_LEN));
        for seq in 1..=3 {
            mux.send(Some(format!("x{seq}")), HostMessage::Ping { seq })
                .await
                .unwrap();
        }
        mux.close().await.unwrap();
        for seq in 1..=3 {
            assert_eq!(
                next_host_frame(&mut r).await.message,
                HostMessage::Ping { seq }
            );
        }
        assert!(read_frame(&mut r, MAX_FRAME_LEN).await.unwrap().is_none());
        assert_eq!(
            mux.send(None, HostMessage::Shutdown).await,
            Err(MuxError::Closed)
        );
    });
}

#[test]
fn a_plugin_end_and_a_host_end_talk_over_one_socket() {
    local(async {
        let (host_io, plugin_io) = tokio::io::duplex(64 * 1024);
        let (mut host_r, host_w) = tokio::io::split(host_io);
        let (mut plugin_r, plugin_w) = tokio::io::split(plugin_io);
        let host: Rc<HostMux> = Mux::start(host_w, MuxConfig::host(MAX_FRAME_LEN));
        let plugin: Rc<PluginMux> = Mux::start(plugin_w, MuxConfig::plugin());
        // The plugin's read loop: answers pings, hands KV replies to its waiters.
        let plugin_loop = {
            let plugin = plugin.clone();
            tokio::task::spawn_local(async move {
                while let Some(body) = read_frame(&mut plugin_r, MAX_FRAME_LEN).await.unwrap() {
                    let frame = decode_host_frame(&body).unwrap();
                    match frame.message {
                        HostMessage::Ping { seq } => plugin
                            .send(frame.request_id, PluginMessage::Pong { seq })
                            .await
                            .unwrap(),
                        _ => assert!(plugin.resolve(frame).is_none()),
                    }
                }
                plugin.fail_all();
            })
        };
        // The host's read loop: serves KV, hands replies to its waiters.
        let host_loop = {
            let host = host.clone();
            tokio::task::spawn_local(async move {
                while let Some(body) = read_frame(&mut host_r, MAX_FRAME_LEN).await.unwrap() {
                    let frame = crate::protocol::decode_plugin_frame(&body).unwrap();
                    match frame.message {
                        PluginMessage::Kv(KvRequest::Get { key }) => {
                            let permit = host.try_admit().unwrap();
                            let reply = KvReply::Get { key, value: None };
                            host.send(
                                frame.request_id,
                                HostMessage::Kv(KvPayload::from_reply(&reply)),
                            )
                            .await
                            .unwrap();
                            drop(permit);
                        }
                        _ => assert!(host.resolve(frame).is_none()),
                    }
                }
                host.fail_all();
            })
        };
        let pong = host.request(HostMessage::Ping { seq: 5 }).await.unwrap();
        assert_eq!(pong.message, PluginMessage::Pong { seq: 5 });
        let kv = plugin
            .request(PluginMessage::Kv(KvRequest::Get { key: "a".into() }))
            .await
            .unwrap();
        assert_eq!(kv.request_id.as_deref(), Some("p1"));
        let HostMessage::Kv(payload) = kv.message else {
            panic!("{kv:?}")
        };
        assert_eq!(
            payload.into_reply().unwrap(),
            KvReply::Get {
                key: "a".into(),
                value: None
            }
        );
        host.close().await.unwrap();
        plugin_loop.await.unwrap();
        plugin.close().await.unwrap();
        host_loop.await.unwrap();
    });
}
