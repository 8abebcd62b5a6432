//! The rules of *Eights*, a short crazy-eights, with no networking: seats, a deck, hands, a pile, and whose turn it
//! is. The server holds one [`Game`]; each player sees only its [`View`] of it.
//!
//! Two to four players sit down and one starts the game: each gets five cards, and one card is turned up on the pile.
//! In turn, a player plays a card of the same suit or rank as the top of the pile, or an eight on anything, or draws a
//! card (which ends the turn). The first to play their last card wins.

use serde::{Deserialize, Serialize};

/// Seats at the table.
pub const MAX_PLAYERS: usize = 4;
/// Cards dealt to each player.
pub const HAND: usize = 5;

const RANKS: [&str; 13] = ["A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K"];
const SUITS: [char; 4] = ['S', 'H', 'D', 'C'];

/// Where the game is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Players sit down; anyone seated may start once two are.
    Waiting,
    /// Cards are played.
    Playing,
    /// Someone won; anyone seated may start the next game.
    Over,
}

/// A player and their hand, in play order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seat {
    /// The username.
    pub name: String,
    /// The cards, such as `7H` or `10S`, in the order drawn.
    pub hand: Vec<String>,
}

/// The whole table, as only the server knows it. Serde carries it through a journal, between the processes of a
/// cluster (or to a store), never to a client: a client gets its [`View`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Game {
    phase: Phase,
    seats: Vec<Seat>,
    deck: Vec<String>,
    pile: Vec<String>,
    turn: usize,
    winner: Option<String>,
    last: Option<String>,
    /// How many games were dealt: who starts goes round the table.
    games: usize,
    /// The shuffle's random state: a game is a function of its seed and the actions.
    seed: u64,
}

/// What one user sees of the table: their own hand, and only the size of everyone else's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct View {
    /// Where the game is.
    pub phase: Phase,
    /// Who sits where, and how many cards each holds.
    pub seats: Vec<SeatView>,
    /// The viewer's own cards; empty for a spectator.
    pub hand: Vec<String>,
    /// The top of the pile, once a game started.
    pub top: Option<String>,
    /// How many cards are left to draw.
    pub deck: usize,
    /// Whose turn it is, while playing.
    pub turn: Option<String>,
    /// Who won the last game.
    pub winner: Option<String>,
    /// The last thing that happened, such as `alice played 7H` or `bob drew a card`.
    pub last: Option<String>,
}

/// One seat as everyone sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeatView {
    /// The username.
    pub name: String,
    /// How many cards they hold.
    pub cards: usize,
}

impl Game {
    /// An empty table whose shuffles follow from `seed`.
    pub fn new(seed: u64) -> Game {
        Game {
            phase: Phase::Waiting,
            seats: Vec::new(),
            deck: Vec::new(),
            pile: Vec::new(),
            turn: 0,
            winner: None,
            last: None,
            games: 0,
            seed,
        }
    }

    /// Where the game is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The seats, in play order.
    pub fn seats(&self) -> &[Seat] {
        &self.seats
    }

    /// The top of the pile.
    pub fn top(&self) -> Option<&str> {
        self.pile.last().map(String::as_str)
    }

    /// Whose turn it is, while playing.
    pub fn turn(&self) -> Option<&str> {
        (self.phase == Phase::Playing).then(|| self.seats[self.turn].name.as_str())
    }

    /// What `username` sees.
    pub fn view(&self, username: &str) -> View {
        View {
            phase: self.phase,
            seats: self
                .seats
                .iter()
                .map(|seat| SeatView {
                    name: seat.name.clone(),
                    cards: seat.hand.len(),
                })
                .collect(),
            hand: self.seat(username).map(|seat| seat.hand.clone()).unwrap_or_default(),
            top: self.top().map(str::to_owned),
            deck: self.deck.len(),
            turn: self.turn().map(str::to_owned),
            winner: self.winner.clone(),
            last: self.last.clone(),
        }
    }

    fn seat(&self, username: &str) -> Option<&Seat> {
        self.seats.iter().find(|seat| seat.name == username)
    }

    fn seat_index(&self, username: &str) -> Option<usize> {
        self.seats.iter().position(|seat| seat.name == username)
    }

    /// `username` takes a seat, while the table waits for a game.
    pub fn sit(&mut self, username: &str) -> Result<(), &'static str> {
        if self.phase == Phase::Playing {
            return Err("a game is being played");
        }
        if self.seat(username).is_some() {
            return Err("you are seated already");
        }
        if self.seats.len() >= MAX_PLAYERS {
            return Err("the table is full");
        }
        self.seats.push(Seat {
            name: username.to_owned(),
            hand: Vec::new(),
        });
        self.last = Some(format!("{username} sat down"));
        Ok(())
    }

    /// `username` gives up their seat, while no game is being played.
    pub fn stand(&mut self, username: &str) -> Result<(), &'static str> {
        if self.phase == Phase::Playing {
            return Err("a game is being played");
        }
        let at = self.seat_index(username).ok_or("you are not seated")?;
        self.seats.remove(at);
        self.last = Some(format!("{username} stood up"));
        Ok(())
    }

    /// A seated player starts a game: a shuffled deck, five cards each, one turned up.
    pub fn start(&mut self, username: &str) -> Result<(), &'static str> {
        if self.phase == Phase::Playing {
            return Err("a game is being played");
        }
        if self.seat(username).is_none() {
            return Err("only a seated player starts a game");
        }
        if self.seats.len() < 2 {
            return Err("a game needs two players");
        }
        let mut deck: Vec<String> = SUITS
            .iter()
            .flat_map(|suit| RANKS.iter().map(move |rank| format!("{rank}{suit}")))
            .collect();
        shuffle(&mut deck, &mut self.seed);
        for seat in &mut self.seats {
            seat.hand = deck.split_off(deck.len() - HAND);
        }
        self.pile = deck.split_off(deck.len() - 1);
        self.deck = deck;
        self.phase = Phase::Playing;
        self.turn = self.games % self.seats.len();
        self.games += 1;
        self.winner = None;
        self.last = Some(format!("{username} dealt"));
        Ok(())
    }

    fn current(&self, username: &str) -> Result<usize, &'static str> {
        if self.phase != Phase::Playing {
            return Err("no game is being played");
        }
        let at = self.seat_index(username).ok_or("you are not playing")?;
        if at != self.turn {
            return Err("it is not your turn");
        }
        Ok(at)
    }

    /// `username` plays `card` from their hand, on their turn, if it fits the top of the pile.
    pub fn play(&mut self, username: &str, card: &str) -> Result<(), &'static str> {
        let at = self.current(username)?;
        let in_hand = self.seats[at]
            .hand
            .iter()
            .position(|c| c == card)
            .ok_or("you do not hold that card")?;
        if !self.top().is_some_and(|top| fits(card, top)) {
            return Err("that card does not fit: play the same suit or rank, or an eight");
        }
        let card = self.seats[at].hand.remove(in_hand);
        self.last = Some(format!("{username} played {card}"));
        self.pile.push(card);
        if self.seats[at].hand.is_empty() {
            self.phase = Phase::Over;
            self.winner = Some(username.to_owned());
            self.last = Some(format!("{username} played their last card and won"));
        } else {
            self.turn = (at + 1) % self.seats.len();
        }
        Ok(())
    }

    /// `username` draws a card on their turn (the pile, less its top, is shuffled into the deck when it runs out),
    /// and the turn passes.
    pub fn draw(&mut self, username: &str) -> Result<(), &'static str> {
        let at = self.current(username)?;
        if self.deck.is_empty() && self.pile.len() > 1 {
            let top = self.pile.split_off(self.pile.len() - 1);
            self.deck = std::mem::replace(&mut self.pile, top);
            shuffle(&mut self.deck, &mut self.seed);
        }
        match self.deck.pop() {
            Some(card) => {
                self.seats[at].hand.push(card);
                self.last = Some(format!("{username} drew a card"));
            }
            None => self.last = Some(format!("{username} passed: nothing left to draw")),
        }
        self.turn = (at + 1) % self.seats.len();
        Ok(())
    }

    /// `username` left the server: their seat goes, and their cards go under the deck. A game that is left with
    /// fewer than two players ends without a winner.
    pub fn remove(&mut self, username: &str) -> bool {
        let Some(at) = self.seat_index(username) else {
            return false;
        };
        let seat = self.seats.remove(at);
        self.deck.splice(0..0, seat.hand);
        self.last = Some(format!("{username} left the table"));
        if self.phase == Phase::Playing {
            if self.seats.len() < 2 {
                self.phase = Phase::Waiting;
                for seat in &mut self.seats {
                    seat.hand.clear();
                }
                self.deck.clear();
                self.pile.clear();
            } else if at < self.turn {
                self.turn -= 1;
            } else if self.turn == self.seats.len() {
                // The last seat left on its turn: the turn goes round to the first.
                self.turn = 0;
            }
        }
        true
    }
}

/// Whether `card` may go on `top`: the same suit or rank, or an eight.
pub fn fits(card: &str, top: &str) -> bool {
    let (rank, suit) = split(card);
    let (top_rank, top_suit) = split(top);
    rank == "8" || rank == top_rank || suit == top_suit
}

fn split(card: &str) -> (&str, &str) {
    card.split_at(card.len().saturating_sub(1))
}

/// Fisher-Yates with SplitMix64, seeded from the game, so that a game replays exactly from its seed.
fn shuffle(cards: &mut [String], seed: &mut u64) {
    for i in (1..cards.len()).rev() {
        *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        cards.swap(i, (z % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started() -> Game {
        let mut game = Game::new(7);
        game.sit("alice").unwrap();
        game.sit("bob").unwrap();
        game.start("bob").unwrap();
        game
    }

    #[test]
    fn a_deal_gives_five_cards_each_and_turns_one_up() {
        let game = started();
        assert_eq!(game.phase(), Phase::Playing);
        assert!(game.seats().iter().all(|seat| seat.hand.len() == HAND));
        assert_eq!(game.view("alice").deck, 52 - 2 * HAND - 1);
        assert_eq!(game.turn(), Some("alice"));
        let mut all: Vec<&String> = game
            .seats()
            .iter()
            .flat_map(|s| &s.hand)
            .chain(&game.deck)
            .chain(&game.pile)
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 52);
    }

    #[test]
    fn a_view_shows_only_its_own_hand() {
        let game = started();
        let view = game.view("alice");
        assert_eq!(view.hand, game.seats()[0].hand);
        assert_eq!(view.seats[1].cards, HAND);
        assert!(game.view("carol").hand.is_empty());
    }

    #[test]
    fn play_and_draw_keep_to_the_rules() {
        let mut game = started();
        assert_eq!(game.draw("bob"), Err("it is not your turn"));
        assert_eq!(game.play("alice", "XX"), Err("you do not hold that card"));
        let top = game.top().unwrap().to_owned();
        let hand = game.seats()[0].hand.clone();
        match hand.iter().find(|card| fits(card, &top)) {
            Some(card) => game.play("alice", card).unwrap(),
            None => game.draw("alice").unwrap(),
        }
        assert_eq!(game.turn(), Some("bob"));
        if let Some(card) = game.seats()[1]
            .hand
            .iter()
            .find(|card| !fits(card, game.top().unwrap()))
            .cloned()
        {
            assert!(game.play("bob", &card).is_err());
        }
    }

    #[test]
    fn eights_fit_anything_and_otherwise_suit_or_rank() {
        assert!(fits("8C", "KH"));
        assert!(fits("10H", "KH"));
        assert!(fits("10H", "10S"));
        assert!(!fits("10H", "9S"));
    }

    #[test]
    fn the_game_plays_to_a_winner_and_a_leaver_ends_a_two_player_game() {
        let mut game = started();
        for _ in 0..500 {
            let Some(player) = game.turn().map(str::to_owned) else {
                break;
            };
            let top = game.top().unwrap().to_owned();
            let hand = game.seat(&player).unwrap().hand.clone();
            match hand.iter().find(|card| fits(card, &top)) {
                Some(card) => game.play(&player, card).unwrap(),
                None => game.draw(&player).unwrap(),
            }
        }
        assert_eq!(game.phase(), Phase::Over);
        assert!(game.view("alice").winner.is_some());
        game.start("alice").unwrap();
        assert!(game.remove("bob"));
        assert_eq!(game.phase(), Phase::Waiting);
        assert_eq!(game.seats().len(), 1);
    }
}
