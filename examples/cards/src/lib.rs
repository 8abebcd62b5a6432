//! *Eights*, a card game with hidden hands, on emitter-state: the three Krmx State models on one server.
//!
//! - The table is a **Projection** (domain `cards`): the server holds the whole [`Game`], deck and hands included,
//!   and each user is sent only its [`View`](game::View): its own hand, the others' hand sizes, the pile's top card.
//!   Clients ask with `projection/action` (`sit`, `stand`, `start`, `draw`, and `play` with a card such as `"7H"`).
//! - Table talk is a **Stream** (domain `chat`): `say` events with `{text}`, which every client folds into the last
//!   [`CHAT_LINES`] lines.
//! - Each player's mood is an **Atom** under their own name (`alice/mood`): strict key prefixes, cleared once everyone
//!   left.
//!
//! With [`Options::inspect`], a client may ask for the server's side of a domain with `test/inspect` (the domain as
//! payload) and gets `test/inspected {domain, value}`: its projection, the stream's state, or the atoms. The answer is
//! queued with the domain held, so it reaches the client after every message of that domain sent to it before: the
//! interop tests compare it with what the client holds at that moment.

pub mod game;

use std::sync::Arc;
use std::time::Duration;

use axum::response::Html;
use axum::routing::get;
use axum::Router;
use emitter_core::{Server, UserRef};
use emitter_state::journal::{Journal, JournalError};
use emitter_state::{AtomModel, Atoms, Projection, ProjectionModel, Stream, StreamModel};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use game::Game;

/// The table's domain.
pub const CARDS: &str = "cards";
/// The table talk's domain.
pub const CHAT: &str = "chat";
/// How many lines of table talk a client keeps.
pub const CHAT_LINES: usize = 50;
/// The longest line of table talk, in characters.
pub const MAX_SAY: usize = 200;
/// A client asks for the server's side of a domain (with [`Options::inspect`]).
pub const INSPECT: &str = "test/inspect";
/// The answer to [`INSPECT`].
pub const INSPECTED: &str = "test/inspected";
/// How long a player whose page went away (a closed tab, a lost network) keeps their seat: long enough for a reload or
/// a reconnect, short enough that a closed tab does not hold a seat for good. Then they leave, as with "leave".
pub const GRACE_PERIOD: Duration = Duration::from_secs(60);

/// How to build the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The seed of the shuffles.
    pub seed: u64,
    /// Whether clients may ask for the server's side of a domain with `test/inspect`: for tests only, since it shows
    /// what the server holds.
    pub inspect: bool,
    /// How long an unlinked player stays; `None` for [`GRACE_PERIOD`].
    pub grace_period: Option<Duration>,
}

/// The table talk, as every client folds it: the last [`CHAT_LINES`] lines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chat {
    /// Oldest first.
    pub lines: Vec<Line>,
}

/// One line of table talk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Who said it.
    pub who: String,
    /// What they said.
    pub text: String,
}

#[derive(Deserialize)]
struct Say {
    text: String,
}

/// The server and its models.
#[derive(Clone, Debug)]
pub struct Cards {
    /// The Krmx server, with its endpoint at `/ws`.
    pub server: Server,
    /// The table.
    pub table: Projection<Game>,
    /// The table talk.
    pub chat: Stream<Chat>,
    /// The moods.
    pub atoms: Atoms,
}

/// Builds the server and registers the three models, in this process.
pub fn build(options: Options) -> Cards {
    build_journaled(options, None).unwrap_or_else(|error| unreachable!("only a journal refuses a domain: {error}"))
}

/// Builds the server and registers the three models through `journal` (on a cluster, each node's journal: the
/// nodes then serve one table, one chat and one set of moods, each run by its owner node), or in this process
/// without one. Fails only when the journal does not take a domain.
pub fn build_journaled(options: Options, journal: Option<Arc<dyn Journal>>) -> Result<Cards, JournalError> {
    let server = Server::builder()
        .path("/ws")
        .grace_period(options.grace_period.unwrap_or(GRACE_PERIOD))
        .build();
    let table = table(&server, options.seed, journal.clone())?;
    let chat = chat(&server, journal.clone())?;
    let atoms = moods(&server, journal)?;

    let cards = Cards {
        server,
        table,
        chat,
        atoms,
    };
    if options.inspect {
        let inspector = cards.clone();
        cards
            .server
            .on_payload(INSPECT, move |u, domain: String| inspector.inspect(u, &domain));
    }
    Ok(cards)
}

/// The table: the whole game on the server, and each user's view of it on their client.
pub fn table(server: &Server, seed: u64, journal: Option<Arc<dyn Journal>>) -> Result<Projection<Game>, JournalError> {
    // Each action is a method of the game, which says why it refuses: the dispatcher's optimistic action is then
    // invalidated, and nothing changes.
    let model = ProjectionModel::new(Game::new(seed), |game: &Game, username: &str| game.view(username))
        .when("sit", |game: &mut Game, player: &str, (): ()| game.sit(player))
        .when("stand", |game: &mut Game, player: &str, (): ()| game.stand(player))
        .when("start", |game: &mut Game, player: &str, (): ()| game.start(player))
        .when("draw", |game: &mut Game, player: &str, (): ()| game.draw(player))
        .when("play", |game: &mut Game, player: &str, card: String| {
            game.play(player, &card)
        })
        // A player who leaves the server gives up their seat: a change that comes from the server, not from an
        // action. The model runs it once per leave (on a cluster: on the table's owner, whichever node the leave
        // was made on), and every caught-up user gets the delta.
        .on_leave(|game: &mut Game, player: &str| {
            if game.remove(player) {
                tracing::info!(username = player, "left the table");
            }
        });
    match journal {
        None => Ok(model.register(server, CARDS)),
        Some(journal) => model.register_journaled(server, CARDS, journal),
    }
}

/// The table talk: every client folds the `say` events into the last lines, and so does the server.
pub fn chat(server: &Server, journal: Option<Arc<dyn Journal>>) -> Result<Stream<Chat>, JournalError> {
    let model = StreamModel::new(Chat::default()).when("say", |chat: &mut Chat, who: &str, Say { text }| {
        if text.trim().is_empty() || text.chars().count() > MAX_SAY {
            return Err("say something, in 200 characters at most");
        }
        chat.lines.push(Line {
            who: who.to_owned(),
            text,
        });
        if chat.lines.len() > CHAT_LINES {
            chat.lines.remove(0);
        }
        Ok(())
    });
    match journal {
        None => Ok(model.register(server, CHAT)),
        Some(journal) => model.register_journaled(server, CHAT, journal),
    }
}

/// The moods' domain in a journal.
pub const MOODS: &str = "moods";

/// The moods: `alice/mood` is alice's to set, and they are forgotten once everyone left.
pub fn moods(server: &Server, journal: Option<Arc<dyn Journal>>) -> Result<Atoms, JournalError> {
    let model = AtomModel::new().strict_key_prefixes(true).clear_when_empty(true);
    match journal {
        None => Ok(model.register(server)),
        Some(journal) => model.register_journaled(server, MOODS, journal),
    }
}

impl Cards {
    /// Answers `test/inspect` with the server's side of `domain`, queued with the domain held.
    fn inspect(&self, user: UserRef<'_>, domain: &str) {
        let username = user.username();
        let answer = |value: serde_json::Value| {
            let inspected = json!({ "domain": domain, "value": value });
            if let Err(error) = user.send_payload(INSPECTED, &inspected) {
                tracing::debug!(username, %error, "could not answer an inspect");
            }
        };
        let held = match domain {
            CARDS => self.table.with_state(|game| answer(json!(game.view(username)))),
            CHAT => self.chat.with_state(|chat| answer(json!(chat))),
            "atoms" => self.atoms.with_atoms(|atoms| answer(json!(atoms))),
            _ => {
                answer(serde_json::Value::Null);
                Ok(())
            }
        };
        if let Err(error) = held {
            tracing::warn!(domain, %error, "could not inspect");
        }
    }
}

/// The page, compiled into the binary.
const PAGE: &str = include_str!("../index.html");

/// The web app: the page at `/` and the Krmx endpoint at `/ws`.
pub fn app(server: &Server) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .merge(emitter_axum::router(server))
}
