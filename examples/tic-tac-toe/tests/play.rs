//! Games over real sockets on loopback: players, a spectator, a refresh in the middle of a game.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

const TIMEOUT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn start() -> (emitter_core::Server, u16) {
    let server = example_tic_tac_toe::build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = example_tic_tac_toe::app(&server);
    let port = emitter_axum::serve(&server, listener, app).await.unwrap();
    (server, port)
}

async fn send(ws: &mut Ws, message: Value) {
    ws.send(WsMessage::text(message.to_string())).await.unwrap();
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(TIMEOUT, ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(text)))) => return serde_json::from_str(&text).unwrap(),
            Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Reads messages until one of type `kind` arrives, and returns its payload.
async fn recv_type(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let message = recv(ws).await;
        if message["type"] == kind {
            return message["payload"].clone();
        }
    }
}

/// Links as `username` and returns the socket and the table it gets on linking.
async fn link(port: u16, username: &str) -> (Ws, Value) {
    let (mut ws, _) = connect_async(format!("ws://127.0.0.1:{port}/ws")).await.unwrap();
    send(
        &mut ws,
        json!({"type": "krmx/link", "payload": {"username": username, "version": "0.6.0"}}),
    )
    .await;
    assert_eq!(recv(&mut ws).await, json!({"type": "krmx/accepted"}));
    let state = recv_type(&mut ws, "ttt/state").await;
    (ws, state)
}

async fn play(ws: &mut Ws, cell: u64) {
    send(ws, json!({"type": "ttt/move", "payload": cell})).await;
}

#[tokio::test]
async fn two_players_play_to_a_win_while_a_spectator_watches() {
    let (server, port) = start().await;
    let (mut alice, state) = link(port, "alice").await;
    assert_eq!(state["status"], "waiting");
    assert_eq!(state["x"], "alice");
    let (mut bob, state) = link(port, "bob").await;
    assert_eq!((state["x"].as_str(), state["o"].as_str()), (Some("alice"), Some("bob")));
    assert_eq!(state["status"], "playing");
    assert_eq!(state["turn"], "x");
    let (mut carol, _) = link(port, "carol").await;

    // Alice waiting for bob got the table when he sat down.
    assert_eq!(recv_type(&mut alice, "ttt/state").await["status"], "playing");

    // Carol watches; she cannot move. Bob cannot move out of turn.
    play(&mut carol, 4).await;
    assert_eq!(recv_type(&mut carol, "ttt/error").await, "spectators cannot move");
    play(&mut bob, 4).await;
    assert_eq!(recv_type(&mut bob, "ttt/error").await, "it is not your turn");

    // x: 0 1 2 wins; o: 3 4. Carol sees every move.
    let mut seen = Value::Null;
    for (player, cell) in [(0, 0), (1, 3), (0, 1), (1, 4), (0, 2)] {
        let ws = if player == 0 { &mut alice } else { &mut bob };
        play(ws, cell).await;
        seen = recv_type(&mut carol, "ttt/state").await;
        assert_eq!(seen["board"][cell as usize], if player == 0 { "x" } else { "o" });
    }
    assert_eq!(seen["status"], "won");
    assert_eq!(seen["winner"], "x");
    assert_eq!(seen["line"], json!([0, 1, 2]));

    // The game is over: moves are refused until a player starts a new game, which the other mark opens.
    play(&mut bob, 5).await;
    assert_eq!(recv_type(&mut bob, "ttt/error").await, "the game is over");
    send(&mut carol, json!({"type": "ttt/restart"})).await;
    assert_eq!(
        recv_type(&mut carol, "ttt/error").await,
        "spectators cannot restart the game"
    );
    send(&mut bob, json!({"type": "ttt/restart"})).await;
    let fresh = recv_type(&mut carol, "ttt/state").await;
    assert_eq!(fresh["status"], "playing");
    assert_eq!(fresh["turn"], "o");
    assert_eq!(
        fresh["board"],
        json!([null, null, null, null, null, null, null, null, null])
    );
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_refreshed_player_relinks_and_gets_the_board() {
    let (server, port) = start().await;
    let (mut alice, _) = link(port, "alice").await;
    let (mut bob, _) = link(port, "bob").await;
    play(&mut alice, 4).await;
    assert_eq!(recv_type(&mut bob, "ttt/state").await["board"][4], "x");

    // Alice refreshes her page: the socket drops, her user stays, unlinked, and keeps the seat.
    let unlinked = server.wait_for_unlink_when(|username| username == "alice");
    drop(alice);
    tokio::time::timeout(TIMEOUT, unlinked).await.unwrap();
    assert_eq!(
        recv(&mut bob).await,
        json!({"type": "krmx/unlinked", "payload": {"username": "alice"}})
    );

    // The game goes on meanwhile.
    play(&mut bob, 0).await;
    assert_eq!(recv_type(&mut bob, "ttt/state").await["board"][0], "o");

    // The new page links as alice again and gets the board as it is now.
    let (mut alice, state) = link(port, "alice").await;
    assert_eq!(state["x"], "alice");
    assert_eq!(state["board"][4], "x");
    assert_eq!(state["board"][0], "o");
    assert_eq!(state["turn"], "x");
    assert_eq!(
        recv(&mut bob).await,
        json!({"type": "krmx/linked", "payload": {"username": "alice"}})
    );
    play(&mut alice, 8).await;
    assert_eq!(recv_type(&mut bob, "ttt/state").await["board"][8], "x");
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_player_who_leaves_frees_the_seat_for_the_first_spectator() {
    let (server, port) = start().await;
    let (_alice, _) = link(port, "alice").await;
    let (mut bob, _) = link(port, "bob").await;
    let (mut carol, _) = link(port, "carol").await;
    let (_dave, state) = link(port, "dave").await;
    assert_eq!((state["x"].as_str(), state["o"].as_str()), (Some("alice"), Some("bob")));

    send(&mut bob, json!({"type": "krmx/leave"})).await;
    let state = recv_type(&mut carol, "ttt/state").await;
    assert_eq!(
        (state["x"].as_str(), state["o"].as_str()),
        (Some("alice"), Some("carol"))
    );
    assert_eq!(state["status"], "playing");
    assert_eq!(recv_type(&mut bob, "krmx/left").await, json!({"username": "bob"}));
    server.close().await.unwrap();
}
