//! Games over real sockets on loopback: players who see only their own hands, a whole game played out, a refused
//! card, a player who leaves, table talk and moods. Each client keeps its projection from the messages it gets, and
//! `test/inspect` checks it against the server's at that point in its stream of messages.

use std::time::Duration;

use emitter_state::delta;
use emitter_testing::{ws_url, Receive, TestClient};
use example_cards::{Options, CARDS, INSPECT, INSPECTED};
use serde_json::{json, Value};
use tokio::net::TcpListener;

async fn start() -> (example_cards::Cards, String) {
    start_with(None).await
}

async fn start_with(grace_period: Option<Duration>) -> (example_cards::Cards, String) {
    let cards = example_cards::build(Options {
        seed: 42,
        inspect: true,
        grace_period,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = example_cards::app(&cards.server);
    let port = emitter_axum::serve(&cards.server, listener, app).await.unwrap();
    (cards, ws_url(port, "/ws"))
}

/// A client that keeps its projection of the table, and every frame it read.
struct Player {
    name: String,
    client: TestClient,
    view: Value,
    seen: Vec<Value>,
}

impl Player {
    /// Links and reads up to its `projection/set`.
    async fn join(url: &str, name: &str) -> Player {
        let client = TestClient::linked(url, name).await;
        let mut player = Player {
            name: name.to_owned(),
            client,
            view: Value::Null,
            seen: Vec::new(),
        };
        while player.view.is_null() {
            player.read().await;
        }
        player
    }

    /// Reads one frame and applies it to the projection; returns it.
    async fn read(&mut self) -> Value {
        let frame = self.client.recv().await;
        let payload = &frame["payload"];
        if payload["domain"] == CARDS {
            match frame["type"].as_str() {
                Some("projection/set") => self.view = payload["projection"].clone(),
                Some("projection/delta") => delta::patch(&mut self.view, &payload["delta"]).unwrap(),
                _ => {}
            }
        }
        self.seen.push(frame.clone());
        frame
    }

    fn act(&self, kind: &str, payload: Option<Value>, optimistic_id: &str) {
        let mut action = json!({ "type": kind });
        if let Some(payload) = payload {
            action["payload"] = payload;
        }
        self.client.send(json!({
            "type": "projection/action",
            "payload": { "domain": CARDS, "action": action, "optimisticId": optimistic_id },
        }));
    }

    /// Asks for the server's view of the table, reads up to the answer, and checks the projection equals it: the
    /// answer comes after every message about the table sent before it.
    async fn settle(&mut self) {
        self.client.send(json!({ "type": INSPECT, "payload": CARDS }));
        loop {
            let frame = self.read().await;
            if frame["type"] == INSPECTED {
                assert_eq!(self.view, frame["payload"]["value"], "{}", self.name);
                return;
            }
        }
    }

    fn hand(&self) -> Vec<String> {
        self.view["hand"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect()
    }
}

/// alice and bob join and sit down, in that order (messages of different users are handled in parallel, so each
/// waits for its own seat before the next sits down); then `dealer` (alice or bob) deals, and both read up to the dealt
/// table.
async fn dealt(url: &str, dealer: &str) -> (Player, Player) {
    let mut alice = Player::join(url, "alice").await;
    let mut bob = Player::join(url, "bob").await;
    alice.act("sit", None, "a1");
    alice.settle().await;
    bob.act("sit", None, "b1");
    bob.settle().await;
    let by = if dealer == "alice" { &alice } else { &bob };
    by.act("start", None, &format!("{}2", &dealer[..1]));
    alice.settle().await;
    bob.settle().await;
    (alice, bob)
}

fn fits(card: &str, top: &str) -> bool {
    example_cards::game::fits(card, top)
}

#[tokio::test]
async fn two_players_see_only_their_own_hands_and_play_a_game_to_the_end() {
    let (_cards, url) = start().await;
    let (alice, bob) = dealt(&url, "alice").await;
    assert_eq!(alice.view["phase"], "playing");
    assert_eq!(alice.hand().len(), 5);
    assert_eq!(
        bob.view["seats"],
        json!([{"name": "alice", "cards": 5}, {"name": "bob", "cards": 5}])
    );

    // Hidden information: no card is played yet, so nothing bob was sent names a card in alice's hand.
    for card in alice.hand() {
        let quoted = format!("\"{card}\"");
        assert!(
            bob.seen.iter().all(|frame| !frame.to_string().contains(&quoted)),
            "{card}"
        );
    }

    let mut players = [alice, bob];
    for turn in 0..400 {
        if players[0].view["phase"] != "playing" {
            break;
        }
        let at = usize::from(players[0].view["turn"] != "alice");
        let top = players[at].view["top"].as_str().unwrap().to_owned();
        let id = format!("{}{turn}", &players[at].name[..1]);
        match players[at].hand().into_iter().find(|card| fits(card, &top)) {
            Some(card) => players[at].act("play", Some(json!(card)), &id),
            None => players[at].act("draw", None, &id),
        }
        for player in &mut players {
            player.settle().await;
        }
        // The mover's own id comes back on its delta: the move changed its projection.
        assert!(players[at]
            .seen
            .iter()
            .any(|f| f["type"] == "projection/delta" && f["payload"]["optimisticId"] == id.as_str()));
    }
    assert_eq!(players[0].view["phase"], "over");
    assert!(players[0].view["winner"].is_string());

    // An optimistic id goes back to its dispatcher only.
    for player in &players {
        let initial = &player.name[..1];
        for frame in &player.seen {
            if let Some(id) = frame["payload"].get("optimisticId") {
                assert!(id.as_str().unwrap().starts_with(initial), "{} got {frame}", player.name);
            }
        }
    }
}

#[tokio::test]
async fn a_card_that_may_not_be_played_is_invalidated_for_its_player_only() {
    let (cards, url) = start().await;
    let (mut alice, mut bob) = dealt(&url, "bob").await;

    // Not bob's turn, and a card alice does not hold: each is answered with an invalidate of its own id.
    bob.act("draw", None, "b3");
    alice.act("play", Some(json!("XX")), "a2");
    alice.act("play", Some(json!(7)), "a3"); // not a card at all
    assert_eq!(
        alice.client.recv_type("projection/invalidate").await["payload"],
        json!({"domain": "cards", "optimisticId": "a2"})
    );
    assert_eq!(
        alice.client.recv_type("projection/invalidate").await["payload"],
        json!({"domain": "cards", "optimisticId": "a3"})
    );
    assert_eq!(
        bob.client.recv_type("projection/invalidate").await["payload"],
        json!({"domain": "cards", "optimisticId": "b3"})
    );
    alice.settle().await;
    bob.settle().await;
    let stats = cards.table.stats();
    assert_eq!((stats.rejected, stats.invalid), (2, 1));
}

#[tokio::test]
async fn a_player_who_leaves_ends_a_two_player_game_and_a_relink_gets_the_table() {
    let (_cards, url) = start().await;
    let (mut alice, bob) = dealt(&url, "bob").await;
    let hand = bob.hand();

    // Bob unlinks, then links from a new connection (a reload), and gets his hand back in a projection/set.
    bob.client.client().unlink().await.unwrap();
    let bob = Player::join(&url, "bob").await;
    assert_eq!(bob.hand(), hand);

    bob.client.client().leave().await.unwrap();
    alice.settle().await;
    assert_eq!(alice.view["phase"], "waiting");
    assert_eq!(alice.view["seats"], json!([{"name": "alice", "cards": 0}]));
}

#[tokio::test]
async fn table_talk_and_moods() {
    let (cards, url) = start().await;
    let mut alice = Player::join(&url, "alice").await;
    let mut bob = Player::join(&url, "bob").await;
    let say = |text: &str| json!({"type": "stream/append", "payload": {"domain": "chat", "dispatcher": "self", "event": {"type": "say", "payload": {"text": text}}}});
    alice.client.send(say("good luck"));
    alice.client.send(say("   ")); // refused: sent to no one
    bob.client
        .send(json!({"type": "atom/set", "payload": {"key": "alice/mood", "atom": "😬"}})); // not bob's key
    bob.client
        .send(json!({"type": "atom/set", "payload": {"key": "bob/mood", "atom": "😎"}}));
    let expected =
        json!({"domain": "chat", "dispatcher": "alice", "event": {"type": "say", "payload": {"text": "good luck"}}});
    assert_eq!(bob.client.recv_type("stream/append").await["payload"], expected);
    assert_eq!(
        alice.client.recv_type("atom/set").await["payload"],
        json!({"key": "bob/mood", "atom": "😎"})
    );
    for (player, domain) in [(&mut alice, "chat"), (&mut bob, "atoms")] {
        player.client.send(json!({"type": INSPECT, "payload": domain}));
        let inspected = player.client.recv_type(INSPECTED).await;
        assert_eq!(inspected["payload"]["domain"], domain);
    }
    assert_eq!(cards.chat.with_state(|chat| chat.lines.len()), Ok(1));
    assert_eq!(cards.chat.stats().rejected, 1);
    assert_eq!(cards.atoms.stats().forbidden, 1);
}

#[tokio::test]
async fn a_closed_page_gives_up_its_seat_after_the_grace_period() {
    assert_eq!(
        example_cards::build(Options::default()).server.config().grace_period(),
        Some(example_cards::GRACE_PERIOD)
    );
    let (cards, url) = start_with(Some(Duration::from_millis(200))).await;
    let (left_tx, mut left) = tokio::sync::mpsc::unbounded_channel();
    cards.server.on_leave(move |u| drop(left_tx.send(u.to_string())));
    let mut alice = Player::join(&url, "alice").await;
    let bob = Player::join(&url, "bob").await;
    alice.act("sit", None, "a1");
    bob.act("sit", None, "b1");
    alice.settle().await;
    assert_eq!(alice.view["seats"].as_array().map(Vec::len), Some(2));
    // Bob's tab closes: he is unlinked, and once the grace period is over he leaves and his seat is free.
    bob.client.client().disconnect(true).await.unwrap();
    let gone = tokio::time::timeout(Duration::from_secs(10), left.recv()).await;
    assert_eq!(gone.ok().flatten().as_deref(), Some("bob"));
    alice.settle().await;
    assert_eq!(alice.view["seats"], json!([{"name": "alice", "cards": 0}]));
}
