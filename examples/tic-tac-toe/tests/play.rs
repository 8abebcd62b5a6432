//! Games over real sockets on loopback: players, a spectator, a refresh in the middle of a game.

use emitter_testing::{linked, unlinked, within, ws_url, Receive, TestClient};
use serde_json::{json, Value};
use tokio::net::TcpListener;

async fn start() -> (emitter_core::Server, String) {
    let server = example_tic_tac_toe::build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = example_tic_tac_toe::app(&server);
    let port = emitter_axum::serve(&server, listener, app).await.unwrap();
    (server, ws_url(port, "/ws"))
}

/// Reads messages until one of type `kind` arrives, and returns its payload.
async fn recv_type(client: &mut TestClient, kind: &str) -> Value {
    client.recv_type(kind).await["payload"].clone()
}

/// Links as `username` and returns the client and the table it gets on linking.
async fn link(url: &str, username: &str) -> (TestClient, Value) {
    let (mut client, outcome) = TestClient::attempt(url, username, None).await;
    assert_eq!(outcome, Ok(()), "{username}");
    let state = recv_type(&mut client, "ttt/state").await;
    (client, state)
}

/// alice and bob linked, in that order: the two players, x and o.
async fn seated(url: &str) -> (TestClient, TestClient) {
    let (alice, _) = link(url, "alice").await;
    let (bob, _) = link(url, "bob").await;
    (alice, bob)
}

fn play(client: &TestClient, cell: u64) {
    client.send(json!({"type": "ttt/move", "payload": cell}));
}

#[tokio::test]
async fn two_players_play_to_a_win_while_a_spectator_watches() {
    let (server, url) = start().await;
    let (mut alice, state) = link(&url, "alice").await;
    assert_eq!(state["status"], "waiting");
    assert_eq!(state["x"], "alice");
    let (mut bob, state) = link(&url, "bob").await;
    assert_eq!((state["x"].as_str(), state["o"].as_str()), (Some("alice"), Some("bob")));
    assert_eq!(state["status"], "playing");
    assert_eq!(state["turn"], "x");
    let (mut carol, _) = link(&url, "carol").await;

    // Alice waiting for bob got the table when he sat down.
    assert_eq!(recv_type(&mut alice, "ttt/state").await["status"], "playing");

    // Carol watches; she cannot move. Bob cannot move out of turn.
    play(&carol, 4);
    assert_eq!(recv_type(&mut carol, "ttt/error").await, "spectators cannot move");
    play(&bob, 4);
    assert_eq!(recv_type(&mut bob, "ttt/error").await, "it is not your turn");

    // x: 0 1 2 wins; o: 3 4. Carol sees every move.
    let mut seen = Value::Null;
    for (player, cell) in [(0, 0), (1, 3), (0, 1), (1, 4), (0, 2)] {
        let client = if player == 0 { &alice } else { &bob };
        play(client, cell);
        seen = recv_type(&mut carol, "ttt/state").await;
        assert_eq!(seen["board"][cell as usize], if player == 0 { "x" } else { "o" });
    }
    assert_eq!(seen["status"], "won");
    assert_eq!(seen["winner"], "x");
    assert_eq!(seen["line"], json!([0, 1, 2]));

    // The game is over: moves are refused until a player starts a new game, which the other mark opens.
    play(&bob, 5);
    assert_eq!(recv_type(&mut bob, "ttt/error").await, "the game is over");
    carol.send(json!({"type": "ttt/restart"}));
    assert_eq!(
        recv_type(&mut carol, "ttt/error").await,
        "spectators cannot restart the game"
    );
    bob.send(json!({"type": "ttt/restart"}));
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
    let (server, url) = start().await;
    let (alice, mut bob) = seated(&url).await;
    play(&alice, 4);
    assert_eq!(recv_type(&mut bob, "ttt/state").await["board"][4], "x");

    // Alice refreshes her page: the socket drops, her user stays, unlinked, and keeps the seat.
    let unlinking = server.wait_for_unlink_when(|username| username == "alice");
    drop(alice);
    within("alice's unlink", unlinking).await.unwrap();
    assert_eq!(bob.recv().await, unlinked("alice"));

    // The game goes on meanwhile.
    play(&bob, 0);
    assert_eq!(recv_type(&mut bob, "ttt/state").await["board"][0], "o");

    // The new page links as alice again and gets the board as it is now.
    let (alice, state) = link(&url, "alice").await;
    assert_eq!(state["x"], "alice");
    assert_eq!(state["board"][4], "x");
    assert_eq!(state["board"][0], "o");
    assert_eq!(state["turn"], "x");
    assert_eq!(bob.recv().await, linked("alice"));
    play(&alice, 8);
    assert_eq!(recv_type(&mut bob, "ttt/state").await["board"][8], "x");
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_player_who_leaves_frees_the_seat_for_the_first_spectator() {
    let (server, url) = start().await;
    let (_alice, mut bob) = seated(&url).await;
    let (mut carol, _) = link(&url, "carol").await;
    let (_dave, state) = link(&url, "dave").await;
    assert_eq!((state["x"].as_str(), state["o"].as_str()), (Some("alice"), Some("bob")));

    bob.client().leave().await.unwrap();
    let state = recv_type(&mut carol, "ttt/state").await;
    assert_eq!(
        (state["x"].as_str(), state["o"].as_str()),
        (Some("alice"), Some("carol"))
    );
    assert_eq!(state["status"], "playing");
    assert_eq!(recv_type(&mut bob, "krmx/left").await, json!({"username": "bob"}));
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_closed_page_gives_up_its_seat_after_the_grace_period() {
    assert_eq!(
        example_tic_tac_toe::build().config().grace_period(),
        Some(example_tic_tac_toe::GRACE_PERIOD)
    );
    let server = example_tic_tac_toe::build_with(std::time::Duration::from_millis(200));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = emitter_axum::serve(&server, listener, example_tic_tac_toe::app(&server))
        .await
        .unwrap();
    let url = ws_url(port, "/ws");
    let (mut alice, bob) = seated(&url).await;
    let (mut carol, _) = link(&url, "carol").await;
    // Bob's tab closes: he is unlinked at once, keeps his seat for the grace period, then leaves and carol sits.
    bob.client().disconnect(true).await.unwrap();
    alice.recv_until(&unlinked("bob")).await;
    let state = loop {
        // A table sent while bob still held his seat may come first; each read is bounded.
        let state = recv_type(&mut carol, "ttt/state").await;
        if state["o"] != "bob" {
            break state;
        }
    };
    assert_eq!(
        (state["x"].as_str(), state["o"].as_str()),
        (Some("alice"), Some("carol"))
    );
    server.close().await.unwrap();
}
