//! The `nexmark` source: the events of the Nexmark benchmark (an online
//! auction house), deterministic given a seed.
//!
//! # The model
//!
//! The model is the one of the Nexmark generator of Apache Beam and Flink.
//! There is one global sequence of events numbered 0, 1, 2, …; in every block
//! of 50 events the first is a new *person*, the next 3 are new *auctions*
//! and the other 46 are *bids*. The kind of event `n` is a function of
//! `n % 50` alone, so the number of persons, auctions and bids among any
//! event numbers is known without generating them.
//!
//! - Ids are dense counters: the person created by event `n` has id
//!   1000 + (persons before `n`), the auction likewise 1000 + (auctions
//!   before `n`).
//! - An auction is sold by a recent person: with probability 3/4 the "hot"
//!   seller (the first person of the newest run of 100 ids), otherwise one of
//!   the `active_people` newest persons. Its category is one of 10..=14, its
//!   initial bid a price ($1 to $1,000,000, log-distributed, in cents), its
//!   reserve the initial bid plus another price, and it expires after a
//!   random time averaging the time it takes to create `in_flight_auctions`
//!   more auctions.
//! - A bid is for an auction still in flight: with probability 1/2 the "hot"
//!   auction (the first of the newest run of 100), otherwise one of the
//!   `in_flight_auctions` newest; its bidder is the hot bidder with
//!   probability 3/4 (the second person of the newest run of 100), otherwise
//!   one of the `active_people` newest persons. Its price is a price as
//!   above, its channel one of a few names (half of the bids from four hot
//!   channels) with a matching URL.
//! - Event `n` happens at `first_event_time + n / event_rate`: event time is
//!   a function of the event number, never of the wall clock. With
//!   `events_per_second` events become *available* at that rate (a live
//!   stream) without changing their times.
//!
//! Unlike Beam's generator, bids and auctions never name a person or an
//! auction a few ids *ahead* of the newest one (Beam's "lead"): every id a
//! row refers to was created by an event at or before it, so joins of the
//! streams are complete. Event times are never out of order.
//!
//! # Determinism
//!
//! Every field of event `n` is a pure function of `(seed, n)`: a small
//! PRNG (splitmix64) is seeded from the seed and the event number for each
//! event, and no random state is carried from one event to the next. Any
//! range of event numbers can be generated again exactly (replays after a
//! crash), in parallel, cut in any way. (Prices go through `f64::powf`,
//! so two platforms whose math libraries round differently could, rarely,
//! differ by a cent.)
//!
//! # One sequence, three sources
//!
//! A source outputs the events of one kind (`stream = "bid" | "auction" |
//! "person"`): the three kinds have different schemas, and a pipeline
//! usually reads them as separate inputs (Nexmark's queries join persons to
//! auctions and auctions to bids). Sources with the same `seed`, `events`,
//! `event_rate`, `first_event_time`, `active_people` and
//! `in_flight_auctions` see the same global sequence, so the bids of one
//! name exactly the auctions of the other. Offsets count events of the
//! global sequence, whichever kind the source outputs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringBuilder, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::execution::TaskContext;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sluice_contract::SourceProvenance;

use super::{AnySource, Slice, SliceLimits, Source, SourceContext};
use crate::error::{Result, RetryHint, SluiceError};
use crate::ops::generate::{BatchGenerator, Batches, GeneratedTable};

fn default_seed() -> u64 {
    42
}
fn default_event_rate() -> f64 {
    10_000.0
}
fn default_first_event_time() -> String {
    "2024-01-01T00:00:00Z".into()
}
fn default_active_people() -> u64 {
    1000
}
fn default_in_flight_auctions() -> u64 {
    100
}

/// `[sources.<name>] kind = "nexmark"`: Nexmark auction events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NexmarkSourceConfig {
    /// The events the source outputs: `bid`, `auction` or `person` (required).
    pub stream: String,
    /// Seed: the same seed gives the same events (default 42).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Events of the whole sequence (all three kinds) in total; absent: the
    /// stream never ends.
    #[serde(default)]
    pub events: Option<u64>,
    /// Events of the whole sequence made available per second of wall-clock
    /// time; absent: as fast as the pipeline reads.
    #[serde(default)]
    pub events_per_second: Option<f64>,
    /// Events per second of event time: the spacing of `date_time` (default
    /// 10000, one event every 100 µs).
    #[serde(default = "default_event_rate")]
    pub event_rate: f64,
    /// Event time of event 0 (RFC 3339; default 2024-01-01T00:00:00Z).
    #[serde(default = "default_first_event_time")]
    pub first_event_time: String,
    /// The newest persons, whom sellers of new auctions and bidders are
    /// drawn from (besides the hot ones; default 1000).
    #[serde(default = "default_active_people")]
    pub active_people: u64,
    /// The newest auctions, which bids are for (besides the hot one; default
    /// 100); an auction lasts on average as long as it takes to create this
    /// many more.
    #[serde(default = "default_in_flight_auctions")]
    pub in_flight_auctions: u64,
}

/// Events per block; every block has the same mix of kinds.
const BLOCK: u64 = 50;
/// Persons per block (the block's first events).
const PERSONS_PER_BLOCK: u64 = 1;
/// Auctions per block (after the persons); the other events are bids.
const AUCTIONS_PER_BLOCK: u64 = 3;

const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;
const CATEGORIES: u64 = 5;
/// Hot ids are taken from the newest run of this many ids.
const HOT_BATCH: u64 = 100;
/// `1 - 1/ratio` of the bids are for the hot auction.
const HOT_AUCTION_RATIO: u64 = 2;
/// `1 - 1/ratio` of the auctions are sold by the hot seller.
const HOT_SELLER_RATIO: u64 = 4;
/// `1 - 1/ratio` of the bids are made by the hot bidder.
const HOT_BIDDER_RATIO: u64 = 4;
/// `1 - 1/ratio` of the bids come from a hot channel.
const HOT_CHANNEL_RATIO: u64 = 2;
/// The first entries of [`CHANNELS`] are the hot channels.
const HOT_CHANNELS: usize = 4;

/// Bid channels and the URL bids from them carry.
static CHANNELS: [(&str, &str); 16] = [
    (
        "Google",
        "https://www.nexmark.com/search/google/home/item.htm?query=1",
    ),
    (
        "Facebook",
        "https://www.nexmark.com/social/facebook/feed/item.htm?query=1",
    ),
    (
        "Baidu",
        "https://www.nexmark.com/search/baidu/home/item.htm?query=1",
    ),
    (
        "Apple",
        "https://www.nexmark.com/app/apple/store/item.htm?query=1",
    ),
    (
        "channel-1",
        "https://www.nexmark.com/ads/banner/east/item.htm?channel_id=1",
    ),
    (
        "channel-2",
        "https://www.nexmark.com/ads/banner/west/item.htm?channel_id=2",
    ),
    (
        "channel-3",
        "https://www.nexmark.com/ads/video/east/item.htm?channel_id=3",
    ),
    (
        "channel-4",
        "https://www.nexmark.com/ads/video/west/item.htm?channel_id=4",
    ),
    (
        "channel-5",
        "https://www.nexmark.com/mail/weekly/deals/item.htm?channel_id=5",
    ),
    (
        "channel-6",
        "https://www.nexmark.com/mail/daily/deals/item.htm?channel_id=6",
    ),
    (
        "channel-7",
        "https://www.nexmark.com/shop/list/new/item.htm?channel_id=7",
    ),
    (
        "channel-8",
        "https://www.nexmark.com/shop/grid/new/item.htm?channel_id=8",
    ),
    (
        "channel-9",
        "https://www.nexmark.com/blog/review/top/item.htm?channel_id=9",
    ),
    (
        "channel-10",
        "https://www.nexmark.com/blog/review/new/item.htm?channel_id=10",
    ),
    (
        "channel-11",
        "https://www.nexmark.com/forum/sell/top/item.htm?channel_id=11",
    ),
    (
        "channel-12",
        "https://www.nexmark.com/forum/buy/top/item.htm?channel_id=12",
    ),
];

/// Short filler for the `extra` columns.
static EXTRAS: [&str; 8] = ["", "", "", "", "a", "bb", "ccc", "dddd"];

static FIRST_NAMES: [&str; 12] = [
    "Anna", "Ben", "Carla", "David", "Elena", "Frank", "Grace", "Hugo", "Iris", "Jonas", "Kate",
    "Liam",
];
static LAST_NAMES: [&str; 10] = [
    "Adams", "Brown", "Clark", "Diaz", "Evans", "Fischer", "Garcia", "Hughes", "Ito", "Jensen",
];
/// Cities and their US state.
static CITIES: [(&str, &str); 10] = [
    ("Phoenix", "AZ"),
    ("Tucson", "AZ"),
    ("Los Angeles", "CA"),
    ("San Francisco", "CA"),
    ("Boise", "ID"),
    ("Portland", "OR"),
    ("Bend", "OR"),
    ("Seattle", "WA"),
    ("Redmond", "WA"),
    ("Cheyenne", "WY"),
];

/// The kind of an event; a source outputs one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    Person,
    Auction,
    Bid,
}

impl EventKind {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "person" => Some(EventKind::Person),
            "auction" => Some(EventKind::Auction),
            "bid" => Some(EventKind::Bid),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            EventKind::Person => "person",
            EventKind::Auction => "auction",
            EventKind::Bid => "bid",
        }
    }

    /// The positions `lo..hi` of this kind in every block of events.
    fn span(self) -> (u64, u64) {
        match self {
            EventKind::Person => (0, PERSONS_PER_BLOCK),
            EventKind::Auction => (PERSONS_PER_BLOCK, PERSONS_PER_BLOCK + AUCTIONS_PER_BLOCK),
            EventKind::Bid => (PERSONS_PER_BLOCK + AUCTIONS_PER_BLOCK, BLOCK),
        }
    }

    /// Events of this kind per block of [`BLOCK`] events.
    fn per_block(self) -> u64 {
        let (lo, hi) = self.span();
        hi - lo
    }

    /// Events of this kind among the event numbers `0..n`.
    fn count_before(self, n: u64) -> u64 {
        let (lo, hi) = self.span();
        (n / BLOCK) * (hi - lo) + (n % BLOCK).clamp(lo, hi) - lo
    }

    /// Events of this kind among the event numbers `from..to`.
    fn count_in(self, from: u64, to: u64) -> u64 {
        if to <= from {
            0
        } else {
            self.count_before(to) - self.count_before(from)
        }
    }

    /// The event number of the `k`-th (from 0) event of this kind.
    fn event_number(self, k: u64) -> u64 {
        let (lo, _) = self.span();
        let per = self.per_block();
        (k / per).saturating_mul(BLOCK).saturating_add(lo + k % per)
    }

    /// Calls `f` with every event number of this kind in `from..to`, in order.
    #[inline]
    fn for_each(self, from: u64, to: u64, mut f: impl FnMut(u64)) {
        let (lo, hi) = self.span();
        for block in from / BLOCK..to.div_ceil(BLOCK) {
            let base = block * BLOCK;
            let first = base.saturating_add(lo).max(from);
            let end = base.saturating_add(hi).min(to);
            for n in first..end {
                f(n);
            }
        }
    }

    /// The schema of this kind's rows.
    fn schema(self) -> SchemaRef {
        let id = |name: &str| Field::new(name, DataType::Int64, false);
        let text = |name: &str| Field::new(name, DataType::Utf8, false);
        let time = |name: &str| {
            Field::new(
                name,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            )
        };
        let fields = match self {
            EventKind::Person => vec![
                id("id"),
                text("name"),
                text("email_address"),
                text("credit_card"),
                text("city"),
                text("state"),
                time("date_time"),
                text("extra"),
            ],
            EventKind::Auction => vec![
                id("id"),
                text("item_name"),
                text("description"),
                id("initial_bid"),
                id("reserve"),
                time("date_time"),
                time("expires"),
                id("seller"),
                id("category"),
                text("extra"),
            ],
            EventKind::Bid => vec![
                id("auction"),
                id("bidder"),
                id("price"),
                text("channel"),
                text("url"),
                time("date_time"),
                text("extra"),
            ],
        };
        Arc::new(Schema::new(fields))
    }
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64: a fast, well-mixed hash of a number.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The random numbers of one event: splitmix64 seeded by `(seed, event)`.
#[derive(Debug)]
struct EventRng(u64);

impl EventRng {
    #[inline]
    fn new(seed: u64, event: u64) -> Self {
        Self(mix(seed ^ mix(event)))
    }

    #[inline]
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    /// Uniform in `0..bound` (`0` when `bound` is 0).
    #[inline]
    fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// An entry of a non-empty `table`.
    #[inline]
    fn pick<T: Copy>(&mut self, table: &[T]) -> T {
        table[self.below(table.len() as u64) as usize]
    }

    /// Uniform in `[0, 1)`.
    #[inline]
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Nexmark's "hot" choice: true with probability `1 - 1/ratio`.
    #[inline]
    fn hot(&mut self, ratio: u64) -> bool {
        self.below(ratio) > 0
    }

    /// A price in cents, log-distributed between $1 and $1,000,000
    /// (Nexmark's `round(10^(6 u) * 100)`).
    #[inline]
    fn price(&mut self) -> i64 {
        (10f64.powf(self.unit() * 6.0) * 100.0).round() as i64
    }

    /// Appends `len` random lowercase letters to `buf`.
    fn push_letters(&mut self, buf: &mut String, len: u64) {
        let mut bits = 0u64;
        for i in 0..len {
            if i.is_multiple_of(8) {
                bits = self.next_u64();
            }
            let byte = bits & 0xff;
            bits >>= 8;
            buf.push(char::from(b'a' + ((byte * 26) >> 8) as u8));
        }
    }

    /// Appends a random word of `min..=max` letters to `buf`.
    fn push_word(&mut self, buf: &mut String, min: u64, max: u64) {
        let len = min + self.below(max - min + 1);
        self.push_letters(buf, len);
    }
}

/// Appends `value` as `width` decimal digits, zero-padded.
fn push_digits(buf: &mut String, value: u64, width: u32) {
    for p in (0..width).rev() {
        buf.push(char::from(b'0' + ((value / 10u64.pow(p)) % 10) as u8));
    }
}

fn timestamps(values: Vec<i64>) -> TimestampMicrosecondArray {
    TimestampMicrosecondArray::from(values).with_timezone("UTC")
}

/// The parameters of the event sequence: all an event is a function of,
/// besides its number.
#[derive(Debug, Clone, Copy)]
struct Model {
    seed: u64,
    /// Event time of event 0, µs since the epoch.
    first_us: i64,
    /// Event time between two events, µs.
    delay_us: f64,
    active_people: u64,
    in_flight_auctions: u64,
    /// Auctions last `1..=auction_span_us` µs (uniform).
    auction_span_us: u64,
}

impl Model {
    fn new(
        seed: u64,
        first_us: i64,
        event_rate: f64,
        active_people: u64,
        in_flight_auctions: u64,
    ) -> Self {
        let delay_us = 1e6 / event_rate;
        // Nexmark: an auction lasts on average as long as it takes to create
        // `in_flight_auctions` more auctions.
        let ahead = in_flight_auctions.saturating_mul(BLOCK) / AUCTIONS_PER_BLOCK;
        let horizon_us = ahead as f64 * delay_us;
        let auction_span_us = (2.0 * horizon_us).clamp(1.0, (i64::MAX / 4) as f64) as u64;
        Self {
            seed,
            first_us,
            delay_us,
            active_people: active_people.max(1),
            in_flight_auctions,
            auction_span_us,
        }
    }

    /// The event time of event `n`, µs since the epoch.
    #[inline]
    fn time_us(&self, n: u64) -> i64 {
        self.first_us + (n as f64 * self.delay_us) as i64
    }

    /// Events whose times (and expiries) fit comfortably in a timestamp:
    /// the sequence is at most this long.
    fn max_events(&self) -> u64 {
        let room = (i64::MAX / 4).saturating_sub(self.first_us.max(0));
        if room <= 0 {
            return 0;
        }
        (room as f64 / self.delay_us) as u64
    }

    /// The base-0 id of the newest person at event `n` (created by `n` or before).
    #[inline]
    fn last_person(n: u64) -> u64 {
        EventKind::Person.count_before(n + 1).saturating_sub(1)
    }

    /// The base-0 id of the newest auction at event `n` (created by `n` or before).
    #[inline]
    fn last_auction(n: u64) -> u64 {
        EventKind::Auction.count_before(n + 1).saturating_sub(1)
    }

    /// One of the `active_people` newest persons, given the newest.
    #[inline]
    fn recent_person(&self, rng: &mut EventRng, last: u64) -> u64 {
        let people = last + 1;
        let active = people.min(self.active_people);
        people - active + rng.below(active)
    }

    /// One of the newest auctions (the newest and `in_flight_auctions` before it).
    #[inline]
    fn recent_auction(&self, rng: &mut EventRng, last: u64) -> u64 {
        let first = last.saturating_sub(self.in_flight_auctions);
        first + rng.below(last - first + 1)
    }

    /// The rows of the events of `kind` among event numbers `from..to`.
    fn batch(
        &self,
        kind: EventKind,
        from: u64,
        to: u64,
        schema: SchemaRef,
    ) -> std::result::Result<RecordBatch, ArrowError> {
        match kind {
            EventKind::Person => self.persons(from, to, schema),
            EventKind::Auction => self.auctions(from, to, schema),
            EventKind::Bid => self.bids(from, to, schema),
        }
    }

    fn persons(
        &self,
        from: u64,
        to: u64,
        schema: SchemaRef,
    ) -> std::result::Result<RecordBatch, ArrowError> {
        let kind = EventKind::Person;
        let rows = kind.count_in(from, to) as usize;
        let mut id = Vec::with_capacity(rows);
        let mut name = StringBuilder::with_capacity(rows, rows * 16);
        let mut email = StringBuilder::with_capacity(rows, rows * 20);
        let mut card = StringBuilder::with_capacity(rows, rows * 19);
        let mut city = StringBuilder::with_capacity(rows, rows * 13);
        let mut state = StringBuilder::with_capacity(rows, rows * 2);
        let mut time = Vec::with_capacity(rows);
        let mut extra = StringBuilder::with_capacity(rows, rows * 4);
        let mut buf = String::with_capacity(64);
        kind.for_each(from, to, |n| {
            let mut rng = EventRng::new(self.seed, n);
            id.push(FIRST_PERSON_ID + Self::last_person(n) as i64);
            buf.clear();
            buf.push_str(rng.pick(&FIRST_NAMES));
            buf.push(' ');
            buf.push_str(rng.pick(&LAST_NAMES));
            name.append_value(&buf);
            buf.clear();
            rng.push_word(&mut buf, 3, 8);
            buf.push('@');
            rng.push_word(&mut buf, 3, 6);
            buf.push_str(".com");
            email.append_value(&buf);
            buf.clear();
            for group in 0..4 {
                if group > 0 {
                    buf.push(' ');
                }
                push_digits(&mut buf, rng.below(10_000), 4);
            }
            card.append_value(&buf);
            let (c, s) = rng.pick(&CITIES);
            city.append_value(c);
            state.append_value(s);
            time.push(self.time_us(n));
            extra.append_value(rng.pick(&EXTRAS));
        });
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(id)) as ArrayRef,
                Arc::new(name.finish()),
                Arc::new(email.finish()),
                Arc::new(card.finish()),
                Arc::new(city.finish()),
                Arc::new(state.finish()),
                Arc::new(timestamps(time)),
                Arc::new(extra.finish()),
            ],
        )
    }

    fn auctions(
        &self,
        from: u64,
        to: u64,
        schema: SchemaRef,
    ) -> std::result::Result<RecordBatch, ArrowError> {
        let kind = EventKind::Auction;
        let rows = kind.count_in(from, to) as usize;
        let mut id = Vec::with_capacity(rows);
        let mut item = StringBuilder::with_capacity(rows, rows * 21);
        let mut description = StringBuilder::with_capacity(rows, rows * 60);
        let mut initial_bid = Vec::with_capacity(rows);
        let mut reserve = Vec::with_capacity(rows);
        let mut time = Vec::with_capacity(rows);
        let mut expires = Vec::with_capacity(rows);
        let mut seller = Vec::with_capacity(rows);
        let mut category = Vec::with_capacity(rows);
        let mut extra = StringBuilder::with_capacity(rows, rows * 4);
        let mut buf = String::with_capacity(128);
        kind.for_each(from, to, |n| {
            let mut rng = EventRng::new(self.seed, n);
            let t = self.time_us(n);
            id.push(FIRST_AUCTION_ID + Self::last_auction(n) as i64);
            buf.clear();
            rng.push_word(&mut buf, 3, 10);
            buf.push(' ');
            rng.push_word(&mut buf, 3, 10);
            item.append_value(&buf);
            buf.clear();
            let words = 3 + rng.below(6);
            for w in 0..words {
                if w > 0 {
                    buf.push(' ');
                }
                rng.push_word(&mut buf, 2, 9);
            }
            description.append_value(&buf);
            let initial = rng.price();
            initial_bid.push(initial);
            reserve.push(initial + rng.price());
            time.push(t);
            expires.push(t.saturating_add(1 + rng.below(self.auction_span_us) as i64));
            let last_person = Self::last_person(n);
            let s = if rng.hot(HOT_SELLER_RATIO) {
                (last_person / HOT_BATCH) * HOT_BATCH
            } else {
                self.recent_person(&mut rng, last_person)
            };
            seller.push(FIRST_PERSON_ID + s as i64);
            category.push(FIRST_CATEGORY_ID + rng.below(CATEGORIES) as i64);
            extra.append_value(rng.pick(&EXTRAS));
        });
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(id)) as ArrayRef,
                Arc::new(item.finish()),
                Arc::new(description.finish()),
                Arc::new(Int64Array::from(initial_bid)),
                Arc::new(Int64Array::from(reserve)),
                Arc::new(timestamps(time)),
                Arc::new(timestamps(expires)),
                Arc::new(Int64Array::from(seller)),
                Arc::new(Int64Array::from(category)),
                Arc::new(extra.finish()),
            ],
        )
    }

    /// Bids: every buffer is allocated once, at its final size; the loop
    /// copies strings from static tables and never allocates.
    fn bids(
        &self,
        from: u64,
        to: u64,
        schema: SchemaRef,
    ) -> std::result::Result<RecordBatch, ArrowError> {
        let kind = EventKind::Bid;
        let rows = kind.count_in(from, to) as usize;
        let channel_bytes = CHANNELS.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
        let url_bytes = CHANNELS.iter().map(|(_, u)| u.len()).max().unwrap_or(0);
        let extra_bytes = EXTRAS.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut auction = Vec::with_capacity(rows);
        let mut bidder = Vec::with_capacity(rows);
        let mut price = Vec::with_capacity(rows);
        let mut channel = StringBuilder::with_capacity(rows, rows * channel_bytes);
        let mut url = StringBuilder::with_capacity(rows, rows * url_bytes);
        let mut time = Vec::with_capacity(rows);
        let mut extra = StringBuilder::with_capacity(rows, rows * extra_bytes);
        kind.for_each(from, to, |n| {
            let mut rng = EventRng::new(self.seed, n);
            let last_auction = Self::last_auction(n);
            let a = if rng.hot(HOT_AUCTION_RATIO) {
                (last_auction / HOT_BATCH) * HOT_BATCH
            } else {
                self.recent_auction(&mut rng, last_auction)
            };
            auction.push(FIRST_AUCTION_ID + a as i64);
            let last_person = Self::last_person(n);
            let b = if rng.hot(HOT_BIDDER_RATIO) {
                // the second person of the run, so hot bidders are not hot sellers
                ((last_person / HOT_BATCH) * HOT_BATCH + 1).min(last_person)
            } else {
                self.recent_person(&mut rng, last_person)
            };
            bidder.push(FIRST_PERSON_ID + b as i64);
            price.push(rng.price());
            let (c, u) = if rng.hot(HOT_CHANNEL_RATIO) {
                rng.pick(&CHANNELS[..HOT_CHANNELS])
            } else {
                rng.pick(&CHANNELS[HOT_CHANNELS..])
            };
            channel.append_value(c);
            url.append_value(u);
            time.push(self.time_us(n));
            extra.append_value(rng.pick(&EXTRAS));
        });
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(auction)) as ArrayRef,
                Arc::new(Int64Array::from(bidder)),
                Arc::new(Int64Array::from(price)),
                Arc::new(channel.finish()),
                Arc::new(url.finish()),
                Arc::new(timestamps(time)),
                Arc::new(extra.finish()),
            ],
        )
    }
}

/// Events `[start, end)` of one kind in chunks of `chunk` event numbers; a
/// unit is a chunk's first event number.
#[derive(Debug)]
struct NexmarkGenerator {
    kind: EventKind,
    model: Model,
    schema: SchemaRef,
    end: u64,
    chunk: u64,
}

impl BatchGenerator for NexmarkGenerator {
    fn describe(&self) -> String {
        format!(
            "nexmark {} seed={} events<{}",
            self.kind.name(),
            self.model.seed,
            self.end
        )
    }
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn generate(&self, unit: u64, _task: &TaskContext) -> Batches {
        let to = unit.saturating_add(self.chunk).min(self.end);
        // exactly one batch per unit, even an empty one: an event-time scan
        // reads the partitions' batches round robin to restore the order
        if self.kind.count_in(unit, to) == 0 {
            return Box::new(std::iter::once(Ok::<_, ArrowError>(
                RecordBatch::new_empty(Arc::clone(&self.schema)),
            )));
        }
        Box::new(std::iter::once(self.model.batch(
            self.kind,
            unit,
            to,
            Arc::clone(&self.schema),
        )))
    }
}

/// Opens a `nexmark` source.
pub(super) fn open(
    cfg: &NexmarkSourceConfig,
    ctx: &SourceContext<'_>,
) -> Result<Box<dyn AnySource>> {
    let issue = |key: &str, msg: String| {
        SluiceError::spec(ctx.spec.issue(format!("sources.{}.{key}", ctx.name), msg))
    };
    let Some(kind) = EventKind::parse(&cfg.stream) else {
        return Err(issue(
            "stream",
            format!(
                "stream must be one of `bid`, `auction`, `person`, got `{}`",
                cfg.stream
            ),
        ));
    };
    // at least one event a day, at most one a microsecond (the timestamps'
    // resolution: event times increase strictly with the event number)
    if !((1.0 / 86_400.0)..=1e6).contains(&cfg.event_rate) {
        return Err(issue(
            "event_rate",
            format!(
                "must be between 0.0000116 (an event a day) and 1000000 (an event a microsecond), got {}",
                cfg.event_rate
            ),
        ));
    }
    if let Some(r) = cfg.events_per_second {
        // at least one event a day, at most one a nanosecond
        if !((1.0 / 86_400.0)..=1e9).contains(&r) {
            return Err(issue(
                "events_per_second",
                format!("must be between 0.0000116 (an event a day) and 1e9, got {r}"),
            ));
        }
    }
    if cfg.active_people == 0 {
        return Err(issue(
            "active_people",
            "must be at least 1, got 0".to_string(),
        ));
    }
    if cfg.in_flight_auctions == 0 {
        return Err(issue(
            "in_flight_auctions",
            "must be at least 1, got 0".to_string(),
        ));
    }
    let first = chrono::DateTime::parse_from_rfc3339(&cfg.first_event_time).map_err(|e| {
        issue(
            "first_event_time",
            format!("`{}` is not an RFC 3339 time: {e}", cfg.first_event_time),
        )
    })?;
    let source = NexmarkSource::new(
        ctx.name,
        cfg.clone(),
        kind,
        first.timestamp_micros(),
        ctx.target_partitions,
        ctx.batch_size,
    );
    if source.model.max_events() == 0 {
        return Err(issue(
            "first_event_time",
            format!(
                "`{}` is too far in the future for any event time to fit in a timestamp",
                cfg.first_event_time
            ),
        ));
    }
    Ok(Box::new(source))
}

#[derive(Debug)]
struct NexmarkSource {
    name: String,
    config: NexmarkSourceConfig,
    kind: EventKind,
    model: Model,
    schema: SchemaRef,
    /// The next event number of the global sequence.
    next: u64,
    /// When pacing started and the event it started at (paced streams).
    clock: Option<(Instant, u64)>,
    target_partitions: usize,
    /// Event numbers per unit of work (about a batch of this kind's rows).
    chunk: u64,
}

/// A Nexmark source's position: the number of the next event of the global
/// sequence (of all kinds, whichever kind the source outputs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NexmarkOffset {
    /// Events `0..next` were handed out.
    pub next: u64,
}

impl NexmarkSource {
    fn new(
        name: &str,
        config: NexmarkSourceConfig,
        kind: EventKind,
        first_us: i64,
        target_partitions: usize,
        batch_size: usize,
    ) -> Self {
        let model = Model::new(
            config.seed,
            first_us,
            config.event_rate,
            config.active_people,
            config.in_flight_auctions,
        );
        let chunk = (batch_size.max(1) as u64).div_ceil(kind.per_block()) * BLOCK;
        Self {
            name: name.to_string(),
            config,
            kind,
            model,
            schema: kind.schema(),
            next: 0,
            clock: None,
            target_partitions,
            chunk,
        }
    }

    /// The number of events the sequence has: `events`, or as many as have
    /// event times that fit in a timestamp.
    fn limit(&self) -> u64 {
        self.config
            .events
            .unwrap_or(u64::MAX)
            .min(self.model.max_events())
    }

    /// Committed offsets `start..end` this source can make again.
    fn check(&self, start: &NexmarkOffset, end: &NexmarkOffset) -> Result<()> {
        let limit = self.limit();
        if start.next <= end.next && end.next <= limit {
            return Ok(());
        }
        Err(SluiceError::Source {
            source_name: self.name.clone(),
            file: None,
            line: None,
            message: format!(
                "the committed offsets (events {}..{}) are not a range this nexmark source makes (events 0..{limit}); the commit log was edited or belongs to another pipeline",
                start.next, end.next
            ),
            retry: RetryHint::Never,
            cause: None,
        })
    }

    /// The event number just after the `rows`-th event of this source's kind
    /// at or after `from` (at least one row).
    fn end_after_rows(&self, from: u64, rows: u64) -> u64 {
        let k = self.kind.count_before(from).saturating_add(rows.max(1) - 1);
        self.kind.event_number(k).saturating_add(1)
    }

    fn slice(&self, from: u64, to: u64) -> Slice<NexmarkOffset> {
        let generator = Arc::new(NexmarkGenerator {
            kind: self.kind,
            model: self.model,
            schema: Arc::clone(&self.schema),
            end: to,
            chunk: self.chunk,
        });
        let units: Vec<u64> = (from..to).step_by(self.chunk.max(1) as usize).collect();
        Slice {
            table: Arc::new(GeneratedTable::new(
                generator,
                units,
                self.target_partitions,
            )),
            start: NexmarkOffset { next: from },
            end: NexmarkOffset { next: to },
            estimated_rows: Some(self.kind.count_in(from, to)),
            uris: vec![format!(
                "nexmark://{}?stream={}&seed={}&events={from}..{to}",
                self.name,
                self.kind.name(),
                self.config.seed
            )],
        }
    }

    /// Events available now, at most `cap` (paced streams make them
    /// available over time).
    fn available(&mut self, cap: u64) -> u64 {
        match self.config.events_per_second {
            None => cap,
            Some(rate) => {
                let (t0, e0) = *self.clock.get_or_insert((Instant::now(), self.next));
                e0.saturating_add((t0.elapsed().as_secs_f64() * rate) as u64)
                    .min(cap)
            }
        }
    }
}

#[async_trait]
impl Source for NexmarkSource {
    type Offset = NexmarkOffset;

    fn kind(&self) -> &str {
        "nexmark"
    }
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn is_bounded(&self) -> bool {
        self.config.events.is_some()
    }
    fn provenance(&self) -> SourceProvenance {
        let mut parameters = serde_json::Map::new();
        parameters.insert("seed".into(), json!(self.config.seed));
        parameters.insert("stream".into(), json!(self.kind.name()));
        parameters.insert("event_rate".into(), json!(self.config.event_rate));
        parameters.insert(
            "events_per_second".into(),
            json!(self.config.events_per_second),
        );
        parameters.insert("events".into(), json!(self.config.events));
        parameters.insert(
            "first_event_time".into(),
            json!(self.config.first_event_time),
        );
        parameters.insert("active_people".into(), json!(self.config.active_people));
        parameters.insert(
            "in_flight_auctions".into(),
            json!(self.config.in_flight_auctions),
        );
        SourceProvenance {
            source: self.name.clone(),
            kind: "nexmark".into(),
            uris: vec![format!(
                "nexmark://{}?stream={}&seed={}",
                self.name,
                self.kind.name(),
                self.config.seed
            )],
            parameters,
            upstream: None,
        }
    }
    async fn restart(&mut self) -> Result<()> {
        self.next = 0;
        self.clock = None;
        Ok(())
    }
    async fn resume(&mut self, at: &NexmarkOffset) -> Result<()> {
        self.check(at, at)?;
        self.next = at.next;
        self.clock = None;
        Ok(())
    }
    async fn next_slice(&mut self, limits: &SliceLimits) -> Result<Option<Slice<NexmarkOffset>>> {
        let cap = self.limit();
        if self.next >= cap {
            return Ok(None);
        }
        let want = self
            .end_after_rows(self.next, limits.max_rows.unwrap_or(1_000_000))
            .min(cap);
        let mut available = self.available(cap);
        if available < want
            && let Some(rate) = self.config.events_per_second
        {
            // wait for the events, at most the epoch's latency bound
            let missing = (want - available) as f64 / rate;
            let wait = Duration::try_from_secs_f64(missing)
                .unwrap_or(Duration::MAX)
                .min(limits.max_latency.unwrap_or(Duration::from_secs(1)));
            tokio::time::sleep(wait).await;
            available = self.available(cap);
        }
        let from = self.next;
        let to = want.min(available).max(from);
        self.next = to;
        Ok(Some(self.slice(from, to)))
    }
    async fn replay(
        &mut self,
        start: &NexmarkOffset,
        end: &NexmarkOffset,
    ) -> Result<Slice<NexmarkOffset>> {
        self.check(start, end)?;
        self.next = end.next;
        self.clock = None;
        Ok(self.slice(start.next, end.next))
    }
    fn estimated_remaining_rows(&self) -> Option<u64> {
        self.config
            .events
            .map(|_| self.kind.count_in(self.next, self.limit()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::compute::concat_batches;
    use datafusion::arrow::datatypes::{Int64Type, TimestampMicrosecondType};
    use datafusion::prelude::SessionContext;

    use super::*;

    const KINDS: [EventKind; 3] = [EventKind::Person, EventKind::Auction, EventKind::Bid];

    /// The kind of event `n`, the slow way.
    fn kind_of(n: u64) -> EventKind {
        match n % BLOCK {
            0 => EventKind::Person,
            1..=3 => EventKind::Auction,
            _ => EventKind::Bid,
        }
    }

    /// Event 0 at time 0, 100 µs apart.
    fn model(seed: u64) -> Model {
        Model::new(seed, 0, 10_000.0, 1000, 100)
    }

    fn batch(model: &Model, kind: EventKind, from: u64, to: u64) -> RecordBatch {
        model.batch(kind, from, to, kind.schema()).unwrap()
    }

    fn ints(b: &RecordBatch, column: &str) -> Vec<i64> {
        b.column_by_name(column)
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    }

    fn times(b: &RecordBatch, column: &str) -> Vec<i64> {
        b.column_by_name(column)
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>()
            .values()
            .to_vec()
    }

    fn config(toml: &str) -> NexmarkSourceConfig {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn events_are_a_function_of_seed_and_event_number() {
        for kind in KINDS {
            let whole = batch(&model(7), kind, 100, 20_000);
            assert_eq!(whole, batch(&model(7), kind, 100, 20_000));
            let parts = [
                batch(&model(7), kind, 100, 7_777),
                batch(&model(7), kind, 7_777, 20_000),
            ];
            let joined = concat_batches(&whole.schema(), &parts).unwrap();
            assert_eq!(whole, joined, "{kind:?}: any split gives the same rows");
            assert_ne!(whole, batch(&model(8), kind, 100, 20_000), "{kind:?}");
            assert_eq!(*whole.schema(), *kind.schema());
        }
    }

    #[test]
    fn one_person_and_three_auctions_in_every_fifty_events() {
        let m = model(1);
        let rows: Vec<usize> = KINDS
            .iter()
            .map(|k| batch(&m, *k, 0, 50_000).num_rows())
            .collect();
        assert_eq!(rows, vec![1_000, 3_000, 46_000]);
        // any 50 consecutive events have the same mix
        for from in [0, 1, 3, 4, 17, 49, 1_234] {
            let counts: Vec<u64> = KINDS.iter().map(|k| k.count_in(from, from + 50)).collect();
            assert_eq!(counts, vec![1, 3, 46], "from {from}");
        }
        // Beam's layout: the person first in each block, then the auctions
        for n in 0..100 {
            let (lo, hi) = kind_of(n).span();
            assert!((lo..hi).contains(&(n % BLOCK)), "event {n}");
        }
    }

    #[test]
    fn counts_match_the_generated_rows() {
        let m = model(3);
        for i in 0..40u64 {
            let from = mix(i) % 20_000;
            let to = from + mix(i + 1_000) % 3_000;
            for kind in KINDS {
                let slow = (from..to).filter(|n| kind_of(*n) == kind).count() as u64;
                assert_eq!(kind.count_in(from, to), slow, "{kind:?} {from}..{to}");
                let rows = batch(&m, kind, from, to).num_rows() as u64;
                assert_eq!(rows, slow, "{kind:?} {from}..{to}");
                let mut seen = Vec::new();
                kind.for_each(from, to, |n| seen.push(n));
                let expected: Vec<u64> = (from..to).filter(|n| kind_of(*n) == kind).collect();
                assert_eq!(seen, expected);
            }
        }
        for kind in KINDS {
            for k in 0..500 {
                let n = kind.event_number(k);
                assert_eq!(kind_of(n), kind);
                assert_eq!(kind.count_before(n), k);
            }
        }
        assert_eq!(EventKind::Bid.count_in(10, 5), 0);
    }

    #[test]
    fn ids_name_people_and_auctions_created_at_or_before() {
        for m in [model(5), Model::new(5, 0, 10_000.0, 30, 7)] {
            let events = 100_000;
            let people = batch(&m, EventKind::Person, 0, events);
            let auctions = batch(&m, EventKind::Auction, 0, events);
            let bids = batch(&m, EventKind::Bid, 0, events);
            let person_ids = ints(&people, "id");
            let auction_ids = ints(&auctions, "id");
            // dense ids from 1000, in the order of creation
            assert_eq!(person_ids, (1000..1000 + 2_000).collect::<Vec<i64>>());
            assert_eq!(auction_ids, (1000..1000 + 6_000).collect::<Vec<i64>>());
            let person_set: HashSet<i64> = person_ids.iter().copied().collect();
            let auction_set: HashSet<i64> = auction_ids.iter().copied().collect();
            let created =
                |kind: EventKind, id: i64, first: i64| kind.event_number((id - first) as u64);
            // event times are 100 µs apart from 0: the event number is time / 100
            for (i, t) in times(&people, "date_time").iter().enumerate() {
                assert_eq!(
                    created(EventKind::Person, person_ids[i], 1000),
                    (*t / 100) as u64
                );
            }
            let sellers = ints(&auctions, "seller");
            for (i, t) in times(&auctions, "date_time").iter().enumerate() {
                let n = (*t / 100) as u64;
                assert_eq!(created(EventKind::Auction, auction_ids[i], 1000), n);
                assert!(person_set.contains(&sellers[i]));
                assert!(created(EventKind::Person, sellers[i], 1000) <= n);
            }
            let (bid_auctions, bidders) = (ints(&bids, "auction"), ints(&bids, "bidder"));
            for (i, t) in times(&bids, "date_time").iter().enumerate() {
                let n = (*t / 100) as u64;
                assert_eq!(kind_of(n), EventKind::Bid);
                assert!(auction_set.contains(&bid_auctions[i]));
                assert!(created(EventKind::Auction, bid_auctions[i], 1000) <= n);
                // in flight: among the newest auctions (or the hot one)
                let newest = Model::last_auction(n) as i64 + 1000;
                let window = m.in_flight_auctions.max(HOT_BATCH - 1) as i64;
                assert!(newest - bid_auctions[i] <= window, "bid {n}");
                assert!(person_set.contains(&bidders[i]));
                assert!(created(EventKind::Person, bidders[i], 1000) <= n);
            }
        }
    }

    #[test]
    fn fields_are_in_range() {
        let m = model(11);
        let auctions = batch(&m, EventKind::Auction, 0, 50_000);
        let (start, expires) = (times(&auctions, "date_time"), times(&auctions, "expires"));
        let (initial, reserve) = (ints(&auctions, "initial_bid"), ints(&auctions, "reserve"));
        for i in 0..auctions.num_rows() {
            assert!(expires[i] > start[i]);
            assert!(expires[i] - start[i] <= m.auction_span_us as i64 + 1);
            assert!((100..=100_000_000).contains(&initial[i]));
            assert!(reserve[i] > initial[i]);
        }
        assert!(
            ints(&auctions, "category")
                .iter()
                .all(|c| (10..=14).contains(c))
        );
        let bids = batch(&m, EventKind::Bid, 0, 50_000);
        let prices = ints(&bids, "price");
        assert!(prices.iter().all(|p| (100..=100_000_000).contains(p)));
        // log-distributed: about as many prices below $1000 as above
        let cheap = prices.iter().filter(|p| **p < 100_000).count() as f64;
        assert!((cheap / prices.len() as f64 - 0.5).abs() < 0.05);
        let channels = bids.column_by_name("channel").unwrap().as_string::<i32>();
        let urls = bids.column_by_name("url").unwrap().as_string::<i32>();
        for i in 0..bids.num_rows() {
            let entry = CHANNELS
                .iter()
                .find(|(c, _)| *c == channels.value(i))
                .unwrap();
            assert_eq!(entry.1, urls.value(i));
        }
        let people = batch(&m, EventKind::Person, 0, 50_000);
        let cards = people
            .column_by_name("credit_card")
            .unwrap()
            .as_string::<i32>();
        let emails = people
            .column_by_name("email_address")
            .unwrap()
            .as_string::<i32>();
        for i in 0..people.num_rows() {
            assert_eq!(cards.value(i).len(), 19);
            assert!(emails.value(i).ends_with(".com") && emails.value(i).contains('@'));
        }
    }

    #[test]
    fn event_times_increase_with_the_event_number() {
        for rate in [10_000.0, 3_000.0, 7.0, 1e6, 999_999.0] {
            let m = Model::new(1, 1_700_000_000_000_000, rate, 1000, 100);
            assert_eq!(m.time_us(0), 1_700_000_000_000_000);
            for n in 0..200_000 {
                assert!(m.time_us(n + 1) > m.time_us(n), "rate {rate} event {n}");
            }
        }
        let m = model(2);
        for kind in KINDS {
            let t = times(&batch(&m, kind, 0, 20_000), "date_time");
            assert!(t.windows(2).all(|w| w[0] < w[1]), "{kind:?}");
        }
    }

    #[test]
    fn config_keys() {
        let c = config("stream = \"bid\"");
        assert_eq!(c.seed, 42);
        assert_eq!(c.event_rate, 10_000.0);
        assert_eq!(c.active_people, 1000);
        assert_eq!(c.in_flight_auctions, 100);
        assert!(c.events.is_none() && c.events_per_second.is_none());
        assert!(toml::from_str::<NexmarkSourceConfig>("seed = 1").is_err());
        assert!(toml::from_str::<NexmarkSourceConfig>("stream = \"bid\"\nrows = 1").is_err());
    }

    fn source(kind: EventKind, events: u64) -> NexmarkSource {
        let cfg = config(&format!("stream = \"{}\"\nevents = {events}", kind.name()));
        NexmarkSource::new("n", cfg, kind, 0, 3, 500)
    }

    async fn rows_of(slice: &Slice<NexmarkOffset>) -> Vec<(i64, i64)> {
        let batches = SessionContext::new()
            .read_table(Arc::clone(&slice.table))
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut rows: Vec<(i64, i64)> = batches
            .iter()
            .flat_map(|b| {
                times(b, "date_time")
                    .into_iter()
                    .zip(ints(b, b.schema().field(0).name()))
            })
            .collect();
        rows.sort_unstable();
        rows
    }

    #[tokio::test]
    async fn slices_count_rows_of_the_stream() {
        for kind in KINDS {
            let events = 30_011;
            let mut s = source(kind, events);
            assert!(Source::is_bounded(&s));
            assert_eq!(
                Source::estimated_remaining_rows(&s),
                Some(kind.count_in(0, events))
            );
            let limits = SliceLimits {
                max_rows: Some(777),
                ..Default::default()
            };
            let mut next = 0;
            let mut total = 0;
            let mut first = None;
            while let Some(slice) = s.next_slice(&limits).await.unwrap() {
                assert_eq!(slice.start.next, next);
                next = slice.end.next;
                let rows = slice.estimated_rows.unwrap();
                assert_eq!(rows, kind.count_in(slice.start.next, slice.end.next));
                assert!(rows <= 777);
                if next < events {
                    assert_eq!(rows, 777, "{kind:?}: only the last slice is short");
                }
                if first.is_none() {
                    assert_eq!(rows_of(&slice).await.len() as u64, rows);
                    first = Some(slice.clone());
                }
                total += rows;
            }
            assert_eq!(next, events);
            assert_eq!(total, kind.count_in(0, events));
            assert_eq!(Source::estimated_remaining_rows(&s), Some(0));
            // a replay makes the same rows
            let first = first.unwrap();
            let again = s.replay(&first.start, &first.end).await.unwrap();
            assert_eq!(rows_of(&again).await, rows_of(&first).await);
            assert_eq!(s.next, first.end.next);
            // offsets past the end are not this source's
            assert!(s.resume(&NexmarkOffset { next: events + 1 }).await.is_err());
            assert!(
                s.replay(&NexmarkOffset { next: 10 }, &NexmarkOffset { next: 5 })
                    .await
                    .is_err()
            );
            s.resume(&NexmarkOffset { next: events }).await.unwrap();
            assert!(s.next_slice(&limits).await.unwrap().is_none());
            s.restart().await.unwrap();
            assert_eq!(
                Source::estimated_remaining_rows(&s),
                Some(kind.count_in(0, events))
            );
        }
    }

    #[tokio::test]
    async fn sources_of_the_same_sequence_agree() {
        // the bids of one source name the auctions of another
        let mut bids = source(EventKind::Bid, 20_000);
        let mut auctions = source(EventKind::Auction, 20_000);
        let limits = SliceLimits {
            max_rows: Some(1_000_000),
            ..Default::default()
        };
        let b = bids.next_slice(&limits).await.unwrap().unwrap();
        let a = auctions.next_slice(&limits).await.unwrap().unwrap();
        let auction_ids: HashSet<i64> = rows_of(&a).await.into_iter().map(|(_, id)| id).collect();
        assert_eq!(auction_ids.len(), 1_200);
        assert!(
            rows_of(&b)
                .await
                .iter()
                .all(|(_, a)| auction_ids.contains(a))
        );
    }
}
