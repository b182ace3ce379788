//! Weighted Maglev consistent hashing: turns a service's backends into the lookup table the
//! packet path indexes with `flow_hash % size`.
//!
//! The algorithm is Maglev's (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, section 3.4): every backend walks its own permutation of the
//! slots, `offset, offset + skip, offset + 2·skip, … (mod size)`, and the backends take turns
//! claiming the next free slot of their permutation until the table is full. A prime `size`
//! makes every permutation visit every slot. Removing one of N backends then moves about 1/N
//! of the slots, nearly all of them the removed backend's own.
//!
//! Weights use the usual variant: in round `r` (from 0) backend `i` takes a turn only when
//! `floor((r+1)·w_i / w_max) > floor(r·w_i / w_max)`, kept as a running credit so the loop
//! never divides. Each turn claims exactly one slot, so a backend's share of the table is
//! `w_i / Σw` to within about one slot per backend.
//!
//! The table is a pure function of the set of `(key, id, weight)`: no randomness, and the
//! input is sorted by key first, so two hosts with the same backends build the same table.
//! A backend's permutation comes only from its `key` (FNV-1a and SplitMix64 with fixed seeds,
//! see `permutation`); changing that hash reshuffles every table, so treat it as a wire
//! format.

/// Largest table this module builds: 2^24 slots (64 MiB of `u32`).
pub const MAX_TABLE_SIZE: u32 = 1 << 24;

/// One backend as Maglev sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend<'a> {
    /// Stable name that places the backend in the table (for example `"10.0.0.7:80"` or
    /// `"web-2"`); must be unique among the backends passed in one call. Keep it stable
    /// across restarts and hosts, or the backend's slots move.
    pub key: &'a str,
    /// The value written into the backend's slots (its index in `BACKENDS`). Not used for
    /// placement, so ids may be renumbered without moving any slot.
    pub id: u32,
    /// Relative share of the table; 0 means the backend gets no slot.
    pub weight: u32,
}

/// Why a Maglev table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MaglevError {
    /// The table size is not prime, so some permutations would not cover every slot.
    #[error("Maglev table size {size} is not prime: use a prime such as {suggestion}")]
    NotPrime {
        /// The size asked for.
        size: u32,
        /// The nearest usable prime (the next one up, or the largest allowed).
        suggestion: u32,
    },
    /// The table size exceeds [`MAX_TABLE_SIZE`].
    #[error(
        "Maglev table size {size} is larger than the limit of {max} slots: \
         use a smaller prime, such as 65537"
    )]
    TooLarge {
        /// The size asked for.
        size: usize,
        /// [`MAX_TABLE_SIZE`].
        max: u32,
    },
    /// The table has fewer slots than there are backends with weight above 0.
    #[error(
        "Maglev table size {size} is smaller than the {backends} backends with weight above 0: \
         use a prime of at least 100 × the backend count for even shares (65537 suits up to \
         655 backends)"
    )]
    TooSmall {
        /// The size asked for.
        size: u32,
        /// How many backends have weight above 0.
        backends: usize,
    },
    /// Two backends share a key, so they would share a permutation.
    #[error(
        "backend key {key:?} appears more than once: give every backend of a service a \
         distinct key"
    )]
    DuplicateKey {
        /// The repeated key.
        key: String,
    },
}

/// Builds the lookup table: `size` slots, each holding a backend `id`. Empty Vec when no
/// backend has weight > 0.
///
/// `size` must be a prime no larger than [`MAX_TABLE_SIZE`] and at least the number of
/// backends with weight above 0; keys must be unique. The order of `backends` does not
/// matter.
pub fn build_table(backends: &[MaglevBackend<'_>], size: u32) -> Result<Vec<u32>, MaglevError> {
    match Plan::new(backends, size as usize)? {
        None => Ok(Vec::new()),
        Some(mut plan) => {
            let mut table = vec![0; size as usize];
            plan.fill(&mut table);
            Ok(table)
        }
    }
}

/// Same, writing into an existing slice of length `size` (so the caller can write straight
/// into a memory-mapped BPF array). Returns Ok(false) (and leaves the slice untouched) if no
/// backend has weight > 0.
///
/// The size is `out.len()`, with the same rules as [`build_table`]. On error the slice is
/// untouched as well. Every slot is written exactly once and none is read, so `out` may be
/// memory that is slow to read.
pub fn fill_table(backends: &[MaglevBackend<'_>], out: &mut [u32]) -> Result<bool, MaglevError> {
    match Plan::new(backends, out.len())? {
        None => Ok(false),
        Some(mut plan) => {
            plan.fill(out);
            Ok(true)
        }
    }
}

/// Whether `n` is prime (trial division by 2, 3 and 6k ± 1: at most about 11 000 steps for
/// any `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d = 5u64;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// The prime to suggest in place of a non-prime `size` (which is at most [`MAX_TABLE_SIZE`]).
fn nearest_prime(size: u32) -> u32 {
    if let Some(p) = (size..=MAX_TABLE_SIZE).find(|&n| is_prime(n)) {
        return p;
    }
    (2..MAX_TABLE_SIZE)
        .rev()
        .find(|&n| is_prime(n))
        .unwrap_or(2)
}

/// FNV-1a, 64-bit, over the key's UTF-8 bytes.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET_BASIS, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// SplitMix64's finalizer. FNV-1a alone leaves keys that differ in their last byte (`web-1`,
/// `web-2`) with closely related hashes; this spreads the difference over all 64 bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Seed of the offset hash (the first 8 bytes of π's fraction).
const OFFSET_SEED: u64 = 0x243f_6a88_85a3_08d3;
/// Seed of the skip hash (the next 8 bytes of π's fraction).
const SKIP_SEED: u64 = 0x1319_8a2e_0370_7344;

/// A backend's permutation of a table of prime `size`, as `(offset, skip)`:
///
/// ```text
/// h      = FNV-1a-64(key)
/// offset = mix64(h ^ 0x243f6a8885a308d3) % size
/// skip   = mix64(h ^ 0x13198a2e03707344) % (size - 1) + 1
/// ```
///
/// where `mix64` is SplitMix64's finalizer. `skip` is never 0, and with `size` prime it is
/// coprime to `size`, so the permutation visits every slot.
fn permutation(key: &str, size: u32) -> (u32, u32) {
    let h = fnv1a64(key.as_bytes());
    let size = u64::from(size);
    let offset = mix64(h ^ OFFSET_SEED) % size;
    let skip = mix64(h ^ SKIP_SEED) % (size - 1) + 1;
    // Both are below `size`, which fits in u32.
    (offset as u32, skip as u32)
}

/// Up to what share of the table (in 1024ths) a walker checks one slot of its permutation per
/// step: while most slots are free the first one usually is, and one load is cheapest.
///
/// This and [`MASKED_UNTIL`] were tuned on 100 backends and 65537 slots, with a different
/// backend set for every fill. (Filling the same table over and over, as a timing loop does,
/// lets the branch predictor learn the outcomes and favours a later switch: 450 was about 5%
/// faster there and 4% slower on fresh inputs.) Whether "is it free?" is true is a coin toss
/// the predictor mostly loses as the table fills, and a mispredicted branch, with the cache
/// miss that decides it, costs more than several extra loads, so the probes check more slots
/// per step as the table fills.
const SINGLE_UNTIL: u64 = 300;

/// Up to what share it checks [`MASKED`] slots per step and takes the first free one.
const MASKED_UNTIL: u64 = 970;

/// Slots checked per step by [`Walker::probe_masked`].
const MASKED: usize = 4;

/// Slots checked per step by [`Walker::probe_wide`], from [`MASKED_UNTIL`] until
/// [`SEARCH_BELOW`] slots are left: most steps then find nothing, so a step only ORs its
/// flags and the one that finds a slot works out which.
const WIDE: usize = 8;

/// When this few slots are left, stop walking permutations and search the free slots instead.
///
/// Walking costs about `size / free` probes per slot claimed, searching costs `free`
/// multiplications; without the switch the last 128 slots of a 65537-slot table take about
/// 40% of the time.
const SEARCH_BELOW: u32 = 128;

/// `(a + b) mod m` for `a < m` and `b <= m`, without a division: when `a + b < m` the
/// subtraction wraps to a larger number and `min` keeps the sum.
#[inline(always)]
fn add_mod(a: u32, b: u32, m: u32) -> u32 {
    let sum = a + b;
    sum.min(sum.wrapping_sub(m))
}

/// `a^-1 mod p` for prime `p` and `0 < a < p`, by the extended Euclidean algorithm.
fn inverse_mod(a: u32, p: u32) -> u32 {
    let (mut r0, mut r1) = (i64::from(p), i64::from(a));
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    // `r0` is now gcd(a, p) = 1 and `t0 · a ≡ 1 (mod p)`; the result is below `p`.
    t0.rem_euclid(i64::from(p)) as u32
}

/// Greatest common divisor.
fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Which slots are still free: one byte each, 1 while free, so a check is one load and
/// several checks combine with `|`. `out` is never read: it may be a memory-mapped BPF array.
///
/// Every flag is kept twice, at `slot` and at `slot + size`, so a walker can check
/// `base + stride` (below `2 · size` for `base` and `stride` below `size`) without reducing it.
struct Open {
    /// `2 · size` flags.
    flags: Vec<u8>,
    size: u32,
}

impl Open {
    fn new(size: u32) -> Self {
        Self {
            flags: vec![1; 2 * size as usize],
            size,
        }
    }

    /// The flag of slot `at`.
    ///
    /// # Safety
    ///
    /// `at < size`.
    #[inline(always)]
    unsafe fn get(&self, at: u32) -> u8 {
        debug_assert!(at < self.size);
        // SAFETY: the caller guarantees `at < size`, and there are `2 · size` flags.
        unsafe { *self.flags.get_unchecked(at as usize) }
    }

    /// A pointer to the flag of slot `base`, which must be below `size`. The flag of slot
    /// `(base + stride) mod size` is then at `.add(stride)` for any `stride < size`, within
    /// the `2 · size` flags, so a probe reads each flag with one instruction. (A slice and
    /// `get_unchecked` make the compiler add `base` to every index separately.)
    #[inline(always)]
    fn flags_from(&self, base: u32) -> *const u8 {
        debug_assert!(base < self.size);
        self.flags.as_ptr().wrapping_add(base as usize)
    }

    /// Marks `slot` taken.
    ///
    /// # Safety
    ///
    /// `slot < size`.
    #[inline(always)]
    unsafe fn take(&mut self, slot: u32) {
        let (low, high) = (slot as usize, (slot + self.size) as usize);
        debug_assert!(high < self.flags.len());
        // SAFETY: `slot < size`, so both are below `2 · size`, the length of `flags`.
        unsafe {
            *self.flags.get_unchecked_mut(low) = 0;
            *self.flags.get_unchecked_mut(high) = 0;
        }
    }

    /// The slots still free, in increasing order. By the time this runs nearly all flags are
    /// 0, so it reads them as words, skips 64 at a time, and finds the free slots of a word
    /// from its set bits (a flag is 0 or 1, so each free slot sets exactly one bit).
    fn free_slots(&self) -> Vec<u32> {
        let word = |eight: &[u8]| u64::from_le_bytes(eight.try_into().unwrap_or_default());
        let flags = &self.flags[..self.size as usize];
        let mut free = Vec::new();
        let mut blocks = flags.chunks_exact(64);
        for (first, block) in (0u32..).step_by(64).zip(&mut blocks) {
            let words: [u64; 8] = std::array::from_fn(|j| word(&block[8 * j..8 * j + 8]));
            if words.iter().fold(0, |any, &w| any | w) == 0 {
                continue;
            }
            for (first, mut bits) in (first..).step_by(8).zip(words) {
                while bits != 0 {
                    free.push(first + bits.trailing_zeros() / 8);
                    bits &= bits - 1;
                }
            }
        }
        let rest = blocks.remainder();
        let first = (flags.len() - rest.len()) as u32;
        let open = (first..).zip(rest).filter(|&(_, &flag)| flag != 0);
        free.extend(open.map(|(slot, _)| slot));
        free
    }
}

/// One backend's progress through its permutation. Aligned so that everything a turn reads
/// of it is one cache line.
#[repr(C, align(64))]
struct Walker {
    /// The next slot of its permutation to try.
    next: u32,
    /// The value written into its slots.
    id: u32,
    /// `strides[k] = k · skip mod size`, for `k` in `0..=WIDE`: the offsets from `next` of the
    /// slots one probing step checks, and (the one after those) how far the step moves.
    strides: [u32; WIDE + 1],
}

impl Walker {
    fn new(backend: &MaglevBackend<'_>, size: u32) -> Self {
        let (offset, skip) = permutation(backend.key, size);
        let mut strides = [0; WIDE + 1];
        for k in 1..=WIDE {
            strides[k] = add_mod(strides[k - 1], skip, size);
        }
        Self {
            next: offset,
            id: backend.id,
            strides,
        }
    }

    /// The first free slot of the permutation from `next`, one slot per step. Every probe
    /// ends because the permutation visits every slot and the caller knows one is free.
    #[inline(always)]
    fn probe_single(&self, open: &Open, size: u32) -> u32 {
        let mut at = self.next;
        // SAFETY: `next` is below `size`, and so is every `add_mod` result.
        while unsafe { open.get(at) } == 0 {
            at = add_mod(at, self.strides[1], size);
        }
        at
    }

    /// The same, checking [`MASKED`] slots per step: their flags make a bit mask whose lowest
    /// set bit is the first free one.
    #[inline(always)]
    fn probe_masked(&self, open: &Open, size: u32) -> u32 {
        let strides: [usize; MASKED] = std::array::from_fn(|k| self.strides[k] as usize);
        let mut base = self.next;
        loop {
            let flags = open.flags_from(base);
            // SAFETY: `base` and the strides are below `size` (see `Open::flags_from`).
            let mut mask = u32::from(unsafe { *flags });
            for (lane, &stride) in strides.iter().enumerate().skip(1) {
                // SAFETY: as above.
                mask += u32::from(unsafe { *flags.add(stride) }) << lane;
            }
            if mask != 0 {
                let lane = mask.trailing_zeros() as usize % MASKED;
                return add_mod(base, self.strides[lane], size);
            }
            base = add_mod(base, self.strides[MASKED], size);
        }
    }

    /// The same, checking [`WIDE`] slots per step, for a nearly full table: a step only ORs
    /// the flags, and only the step that finds something builds the mask.
    #[inline(always)]
    fn probe_wide(&self, open: &Open, size: u32) -> u32 {
        let strides: [usize; WIDE] = std::array::from_fn(|k| self.strides[k] as usize);
        let mut base = self.next;
        let flags = loop {
            let flags = open.flags_from(base);
            // SAFETY: `base` and the strides are below `size` (see `Open::flags_from`).
            let mut any = unsafe { *flags };
            for &stride in &strides[1..] {
                // SAFETY: as above.
                any |= unsafe { *flags.add(stride) };
            }
            if any != 0 {
                break flags;
            }
            base = add_mod(base, self.strides[WIDE], size);
        };
        // SAFETY: as above.
        let mut mask = u32::from(unsafe { *flags });
        for (lane, &stride) in strides.iter().enumerate().skip(1) {
            // SAFETY: as above.
            mask += u32::from(unsafe { *flags.add(stride) }) << lane;
        }
        let lane = mask.trailing_zeros() as usize % WIDE;
        add_mod(base, self.strides[lane], size)
    }

    /// The index in `free` (not empty) of the slot the probes would find: the one fewest steps
    /// along the permutation from `next`. That distance is `(slot - next) · skip^-1 mod size`,
    /// with the `mod` done by Barrett reduction (`reciprocal = ⌊(2^64 - 1) / size⌋`), since
    /// the product is below 2^48.
    #[inline(always)]
    fn search(&self, free: &[u32], inverse_skip: u32, size: u32, reciprocal: u64) -> usize {
        let size64 = u64::from(size);
        let mut best = (u64::MAX, 0);
        for (index, &slot) in free.iter().enumerate() {
            let product =
                u64::from(add_mod(slot, size - self.next, size)) * u64::from(inverse_skip);
            let quotient = ((u128::from(product) * u128::from(reciprocal)) >> 64) as u64;
            // The estimated quotient is at most one short.
            let mut distance = product - quotient * size64;
            if distance >= size64 {
                distance -= size64;
            }
            if distance < best.0 {
                best = (distance, index);
            }
        }
        best.1
    }
}

/// A table being filled: how many slots are taken, which are still free, and the table.
struct Filling<'a> {
    filled: u32,
    open: Open,
    out: &'a mut [u32],
}

impl Filling<'_> {
    /// While the table is less than `until` full, gives the first of `turns` (indices into
    /// `walkers`) their turns, in order, and drops them from `turns`. `probe` finds each
    /// walker's slot.
    fn take_turns_until(
        &mut self,
        until: u32,
        turns: &mut &[u32],
        walkers: &mut [Walker],
        probe: impl Fn(&Walker, &Open, u32) -> u32,
    ) {
        let count = turns.len().min(until.saturating_sub(self.filled) as usize);
        if count > 0 {
            let (now, later) = turns.split_at(count);
            take_turns(walkers, now, &mut self.open, self.out, probe);
            self.filled += count as u32;
            *turns = later;
        }
    }
}

/// Gives each walker in `turns` its turn, in order. Kept out of line, one copy per probe, so
/// each loop gets the registers to itself.
#[inline(never)]
fn take_turns(
    walkers: &mut [Walker],
    turns: &[u32],
    open: &mut Open,
    out: &mut [u32],
    probe: impl Fn(&Walker, &Open, u32) -> u32,
) {
    let size = open.size;
    debug_assert_eq!(out.len(), size as usize);
    for &turn in turns {
        let w = &mut walkers[turn as usize];
        let slot = probe(w, open, size);
        // SAFETY: probes return slots below `size`, which is `out.len()`. Unchecked because
        // with these three bounds checks the whole fill took about a third longer (100
        // backends, 65537 slots): their panic paths cost the loop the registers it needs.
        unsafe {
            open.take(slot);
            *out.get_unchecked_mut(slot as usize) = w.id;
        }
        w.next = add_mod(slot, w.strides[1], size);
    }
}

/// Walkers per [`Credits`] block.
const BLOCK: usize = 64;

/// The weighted turn rule for up to [`BLOCK`] walkers, laid out so one round is a few
/// vector instructions per four walkers. Unused places have weight 0 and never get a turn.
struct Credits {
    /// Weight earned and not yet spent on a turn: always below the largest weight.
    credit: [u32; BLOCK],
    weight: [u32; BLOCK],
    /// The largest weight minus `weight`: a walker takes a turn when its credit reaches it.
    gap: [u32; BLOCK],
}

/// The order in which walkers take turns (indices into `Plan::walkers`), round after round.
///
/// In round `r` walker `i` takes a turn when `⌊(r+1)·w_i / w_max⌋ > ⌊r·w_i / w_max⌋`, that is
/// when its running credit reaches `w_max`. The pattern repeats every `w_max / g` rounds,
/// `g` being the gcd of the weights (after that many rounds every credit is back to 0); when
/// the table fills within fewer rounds than that, rounds are worked out one at a time
/// instead.
struct Schedule {
    blocks: Vec<Credits>,
    max_weight: u32,
    /// The current round, or the whole period when `repeats`.
    turns: Vec<u32>,
    /// Whether `turns` holds a whole period, to be replayed forever.
    repeats: bool,
}

impl Schedule {
    /// For walkers with these weights (all above 0) filling `size` slots.
    fn new(weights: &[u32], size: u32) -> Self {
        let max_weight = weights.iter().copied().max().unwrap_or(1);
        let mut blocks: Vec<Credits> = (0..weights.len().div_ceil(BLOCK))
            .map(|_| Credits {
                credit: [0; BLOCK],
                weight: [0; BLOCK],
                gap: [u32::MAX; BLOCK],
            })
            .collect();
        for (i, &w) in weights.iter().enumerate() {
            blocks[i / BLOCK].weight[i % BLOCK] = w;
            blocks[i / BLOCK].gap[i % BLOCK] = max_weight - w;
        }
        let mut schedule = Self {
            blocks,
            max_weight,
            turns: Vec::with_capacity(weights.len()),
            repeats: false,
        };

        // Rounds to fill the table: each hands out Σw / w_max turns on average.
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let rounds = (u64::from(size) * u64::from(max_weight)).div_ceil(total) + 1;
        let g = weights.iter().fold(max_weight, |g, &w| gcd(g, w));
        let period = max_weight / g;
        if u64::from(period) <= rounds {
            // A walker takes `w / g` turns per period; at most about one table's worth.
            let turns: u64 = weights.iter().map(|&w| u64::from(w / g)).sum();
            schedule.turns.reserve_exact(turns as usize);
            for _ in 0..period {
                schedule.round();
            }
            schedule.repeats = true;
        }
        schedule
    }

    /// The turns of the next round, or of the next period.
    #[inline(always)]
    fn next(&mut self) -> &[u32] {
        if !self.repeats {
            self.turns.clear();
            self.round();
        }
        &self.turns
    }

    /// Appends the turns of one round to `turns`.
    fn round(&mut self) {
        let max = self.max_weight;
        for (first, block) in (0u32..).step_by(BLOCK).zip(&mut self.blocks) {
            let mut due = [0u8; BLOCK];
            let walkers = block.credit.iter_mut().zip(&block.weight).zip(&block.gap);
            for (due, ((credit, &weight), &gap)) in due.iter_mut().zip(walkers) {
                let turn = u32::from(*credit >= gap);
                // `credit + weight - max` when the walker takes its turn, else
                // `credit + weight`; the result is below `max`, so wrapping is exact.
                *credit = credit
                    .wrapping_add(weight)
                    .wrapping_sub(max & turn.wrapping_neg());
                *due = turn as u8;
            }
            // Eight 0-or-1 bytes to eight bits at a time (the multiplication moves byte `j`'s
            // bit to bit `56 + j`, with no carries), then the set bits in order.
            let mut mask = 0u64;
            for (j, eight) in due.chunks_exact(8).enumerate() {
                let bytes = u64::from_le_bytes(eight.try_into().unwrap_or_default());
                mask |= (bytes.wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * j);
            }
            while mask != 0 {
                self.turns.push(first + mask.trailing_zeros());
                mask &= mask - 1;
            }
        }
    }
}

/// A validated request: the backends that get slots, in key order, ready to fill a table.
struct Plan {
    walkers: Vec<Walker>,
    schedule: Schedule,
}

impl Plan {
    /// Checks the arguments; `Ok(None)` when no backend has weight above 0.
    fn new(backends: &[MaglevBackend<'_>], size: usize) -> Result<Option<Self>, MaglevError> {
        let size = match u32::try_from(size) {
            Ok(size) if size <= MAX_TABLE_SIZE => size,
            _ => {
                return Err(MaglevError::TooLarge {
                    size,
                    max: MAX_TABLE_SIZE,
                });
            }
        };
        if !is_prime(size) {
            return Err(MaglevError::NotPrime {
                size,
                suggestion: nearest_prime(size),
            });
        }

        // Key order fixes who wins a contested slot, so the caller's order cannot matter.
        let mut sorted: Vec<&MaglevBackend<'_>> = backends.iter().collect();
        sorted.sort_unstable_by_key(|b| b.key);
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0].key == pair[1].key) {
            return Err(MaglevError::DuplicateKey {
                key: pair[0].key.to_owned(),
            });
        }

        sorted.retain(|b| b.weight > 0);
        if sorted.is_empty() {
            return Ok(None);
        }
        if (size as usize) < sorted.len() {
            return Err(MaglevError::TooSmall {
                size,
                backends: sorted.len(),
            });
        }
        let walkers = sorted.iter().map(|b| Walker::new(b, size)).collect();
        let weights: Vec<u32> = sorted.iter().map(|b| b.weight).collect();
        Ok(Some(Self {
            walkers,
            schedule: Schedule::new(&weights, size),
        }))
    }

    /// Fills `out` (whose length `Plan::new` checked): every slot written once, none read.
    ///
    /// This is Maglev's population loop. The four ways of finding a walker's next slot
    /// (`probe_single`, `probe_masked`, `probe_wide` and `search`) find the same slot, each
    /// fastest at a different fill; the tests check the result against a plain
    /// one-slot-at-a-time walk.
    fn fill(&mut self, out: &mut [u32]) {
        let size = out.len() as u32;
        let search_from = size.saturating_sub(SEARCH_BELOW);
        let fill_at = |share: u64| ((u64::from(size) * share / 1024) as u32).min(search_from);
        let (single_until, masked_until) = (fill_at(SINGLE_UNTIL), fill_at(MASKED_UNTIL));
        let mut table = Filling {
            filled: 0,
            open: Open::new(size),
            out,
        };
        // Built when the search starts.
        let mut free: Vec<u32> = Vec::new();
        let mut inverse_skips: Vec<u32> = Vec::new();
        let reciprocal = u64::MAX / u64::from(size);
        let Self { walkers, schedule } = self;
        loop {
            let mut turns = schedule.next();
            // Each way of probing takes the turns until the fill where the next one is faster.
            table.take_turns_until(single_until, &mut turns, walkers, Walker::probe_single);
            table.take_turns_until(masked_until, &mut turns, walkers, Walker::probe_masked);
            table.take_turns_until(search_from, &mut turns, walkers, Walker::probe_wide);

            for &turn in turns {
                if inverse_skips.is_empty() {
                    free = table.open.free_slots();
                    inverse_skips = walkers
                        .iter()
                        .map(|w| inverse_mod(w.strides[1], size))
                        .collect();
                }
                let w = &mut walkers[turn as usize];
                let index = w.search(&free, inverse_skips[turn as usize], size, reciprocal);
                let slot = free.swap_remove(index);
                table.out[slot as usize] = w.id;
                w.next = add_mod(slot, w.strides[1], size);
                table.filled += 1;
                if table.filled == size {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u32 = 65_537;

    /// Owned keys for `n` backends named `backend-0` … with ids 0 … and the given weights.
    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("backend-{i}")).collect()
    }

    fn backends<'a>(keys: &'a [String], weights: &[u32]) -> Vec<MaglevBackend<'a>> {
        keys.iter()
            .zip(weights)
            .enumerate()
            .map(|(i, (key, &weight))| MaglevBackend {
                key,
                id: i as u32,
                weight,
            })
            .collect()
    }

    /// Slots per id, for ids `0..n`.
    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &id in table {
            counts[id as usize] += 1;
        }
        counts
    }

    /// Asserts each backend's share of the table is within 1% (absolute) of its weight's.
    fn assert_shares(weights: &[u32], size: u32) {
        let keys = keys(weights.len());
        let table = build_table(&backends(&keys, weights), size).unwrap();
        assert_eq!(table.len(), size as usize);
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        for (i, (&count, &w)) in counts(&table, weights.len())
            .iter()
            .zip(weights)
            .enumerate()
        {
            let got = count as f64 / f64::from(size);
            let want = w as f64 / total as f64;
            assert!(
                (got - want).abs() <= 0.01,
                "backend {i} (weight {w}): share {got:.4}, want {want:.4}"
            );
            if w == 0 {
                assert_eq!(count, 0, "backend {i} has weight 0 but owns slots");
            }
        }
    }

    #[test]
    fn weights_1_2_3_4_are_honoured() {
        assert_shares(&[1, 2, 3, 4], SIZE);
    }

    #[test]
    fn equal_weights_share_evenly() {
        assert_shares(&[1; 10], SIZE);
        assert_shares(&[7; 100], SIZE);
    }

    #[test]
    fn skewed_and_zero_weights_are_honoured() {
        assert_shares(&[1, 100, 0, 50, 3], SIZE);
        assert_shares(&[u32::MAX, 1, u32::MAX / 2], SIZE);
        assert_shares(&[5, 0, 5], 4099);
    }

    #[test]
    fn removing_one_of_ten_moves_about_a_tenth() {
        let n = 10;
        let keys = keys(n);
        let all = backends(&keys, &[1; 10]);
        let before = build_table(&all, SIZE).unwrap();
        for removed in 0..n as u32 {
            let rest: Vec<_> = all.iter().copied().filter(|b| b.id != removed).collect();
            let after = build_table(&rest, SIZE).unwrap();

            let mut changed = 0usize;
            let mut survivors_moved = 0usize;
            for (&old, &new) in before.iter().zip(&after) {
                assert_ne!(new, removed, "slot still points at the removed backend");
                if old != new {
                    changed += 1;
                    if old != removed {
                        survivors_moved += 1;
                    }
                }
            }
            let size = f64::from(SIZE);
            assert!(
                changed as f64 <= (1.0 / n as f64 + 0.02) * size,
                "removing backend {removed} changed {changed} of {SIZE} slots"
            );
            assert!(
                survivors_moved as f64 <= 0.02 * size,
                "removing backend {removed} moved {survivors_moved} survivors' slots"
            );
        }
    }

    #[test]
    fn input_order_does_not_matter() {
        let keys = keys(7);
        let forward = backends(&keys, &[3, 1, 4, 1, 5, 9, 2]);
        let mut shuffled = forward.clone();
        shuffled.reverse();
        shuffled.rotate_left(3);
        assert_ne!(forward, shuffled);
        assert_eq!(
            build_table(&forward, SIZE).unwrap(),
            build_table(&shuffled, SIZE).unwrap()
        );
    }

    #[test]
    fn building_twice_gives_the_same_table() {
        let keys = keys(5);
        let b = backends(&keys, &[1, 2, 3, 4, 5]);
        assert_eq!(
            build_table(&b, 4099).unwrap(),
            build_table(&b, 4099).unwrap()
        );
    }

    /// Pins the hash and the fill order: if this changes, tables differ between hosts running
    /// the old and new code, which moves flows during an upgrade.
    #[test]
    fn table_is_stable_across_versions() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        let b = [
            MaglevBackend {
                key: "a",
                id: 10,
                weight: 1,
            },
            MaglevBackend {
                key: "b",
                id: 20,
                weight: 2,
            },
            MaglevBackend {
                key: "c",
                id: 30,
                weight: 1,
            },
        ];
        assert_eq!(build_table(&b, 13).unwrap(), GOLDEN_13);
    }

    const GOLDEN_13: [u32; 13] = [10, 20, 20, 10, 30, 30, 10, 20, 20, 20, 20, 20, 30];

    /// Maglev as the paper writes it: one slot at a time, `%` everywhere, and the weighted
    /// turn rule as a formula rather than a running credit.
    fn reference_table(backends: &[MaglevBackend<'_>], size: u32) -> Vec<u32> {
        let mut sorted: Vec<_> = backends.iter().filter(|b| b.weight > 0).collect();
        sorted.sort_by_key(|b| b.key);
        let max = sorted.iter().map(|b| u64::from(b.weight)).max().unwrap();
        let mut next: Vec<(u64, u64)> = sorted
            .iter()
            .map(|b| {
                let (offset, skip) = permutation(b.key, size);
                (u64::from(offset), u64::from(skip))
            })
            .collect();
        let mut table = vec![None; size as usize];
        let mut filled = 0;
        for round in 0u64.. {
            for (b, (slot, skip)) in sorted.iter().zip(&mut next) {
                let w = u64::from(b.weight);
                if (round + 1) * w / max == round * w / max {
                    continue;
                }
                while table[*slot as usize].is_some() {
                    *slot = (*slot + *skip) % u64::from(size);
                }
                table[*slot as usize] = Some(b.id);
                filled += 1;
                if filled == size {
                    return table.into_iter().map(Option::unwrap).collect();
                }
            }
        }
        unreachable!()
    }

    /// The fast paths (several slots per probe, then a search of the free slots) must find
    /// exactly the slot the plain walk finds, for small tables that start in the search
    /// phase and large ones that reach it late.
    #[test]
    fn matches_the_reference_algorithm() {
        let keys = keys(100);
        for n in [1, 2, 3, 10, 33, 100] {
            let equal = backends(&keys[..n], &vec![1; n]);
            let weights: Vec<u32> = (0..n as u32).map(|i| (i * 7) % 5 + (i % 3) * 40).collect();
            let mixed = backends(&keys[..n], &weights);
            for b in [&equal, &mixed] {
                let active = b.iter().filter(|b| b.weight > 0).count();
                for size in [2, 3, 13, 127, 131, 251, 4099, 65_537] {
                    if active == 0 || (size as usize) < active {
                        continue;
                    }
                    assert_eq!(
                        build_table(b, size).unwrap(),
                        reference_table(b, size),
                        "{n} backends, weights {:?}, size {size}",
                        b.iter().map(|b| b.weight).collect::<Vec<_>>()
                    );
                }
            }
        }
    }

    /// Small fixed-seed generator (SplitMix64) for the randomized comparisons.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix64(self.0)
        }

        /// Uniform-ish in `0..n`.
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Random backend sets, weights and table sizes against the plain walk: every phase of
    /// `fill` (and the switches between them mid-round), repeating and one-round-at-a-time
    /// schedules, weights up to `u32::MAX`, and more backends than `SEARCH_BELOW`.
    #[test]
    fn matches_the_reference_on_random_inputs() {
        const SIZES: [u32; 19] = [
            2, 3, 5, 7, 11, 13, 31, 61, 127, 131, 251, 257, 509, 1021, 2053, 4099, 8191, 16_411,
            65_537,
        ];
        let mut rng = Rng(0x5eed_f3a9_11e5);
        let mut compared = 0;
        for case in 0..300 {
            let size = SIZES[rng.below(SIZES.len() as u64) as usize];
            let n = 1 + rng.below(u64::from(size.min(300))) as usize;
            let kind = rng.below(6);
            let keys: Vec<String> = (0..n)
                .map(|i| format!("{:x}-{i}", rng.below(1 << 20)))
                .collect();
            let weights: Vec<u32> = (0..n)
                .map(|i| match kind {
                    0 => 1,
                    1 => rng.below(5) as u32,
                    2 => 1 + rng.below(1000) as u32,
                    3 => rng.next() as u32,
                    4 => u32::MAX - rng.below(3) as u32,
                    _ if i == 0 => 1_000_000,
                    _ => 1 + rng.below(100) as u32,
                })
                .collect();
            let b = backends(&keys, &weights);
            let active = weights.iter().filter(|&&w| w > 0).count();
            if active == 0 || (size as usize) < active {
                continue;
            }
            let table = build_table(&b, size).unwrap();
            let reference = reference_table(&b, size);
            compared += 1;
            if let Some(slot) = (0..table.len()).find(|&i| table[i] != reference[i]) {
                panic!(
                    "case {case}: {n} backends (weights {kind}), size {size}: slot {slot} is \
                     {}, the reference says {}",
                    table[slot], reference[slot]
                );
            }
        }
        assert!(compared > 250, "only {compared} cases were usable");
    }

    /// Many backends on a small table: the probing phases end part-way through a round, and
    /// the search starts with fewer free slots than there are backends.
    #[test]
    fn matches_the_reference_with_more_backends_than_searched_slots() {
        let keys = keys(700);
        for (n, size) in [
            (129, 131),
            (200, 251),
            (300, 509),
            (700, 4099),
            (700, 65_537),
        ] {
            let equal = backends(&keys[..n], &vec![1; n]);
            let weights: Vec<u32> = (0..n as u32).map(|i| 1 + i % 7).collect();
            let mixed = backends(&keys[..n], &weights);
            for b in [&equal, &mixed] {
                assert_eq!(
                    build_table(b, size).unwrap(),
                    reference_table(b, size),
                    "{n} backends, size {size}"
                );
            }
        }
    }

    /// Replaying one period of turns gives the same order as working out every round.
    #[test]
    fn repeating_schedule_matches_round_by_round() {
        let cases: [Vec<u32>; 5] = [
            vec![1; 3],
            vec![1, 2, 3, 4],
            (1..=100).collect(),
            vec![6, 4, 10, 4],
            (0..70).map(|i| 3 * (i % 5 + 1)).collect(),
        ];
        for weights in cases {
            let mut repeating = Schedule::new(&weights, MAX_TABLE_SIZE);
            assert!(repeating.repeats, "weights {weights:?}");
            let mut rounds = Schedule::new(&weights, MAX_TABLE_SIZE);
            // After a whole period every credit is back to 0: start over one round at a time.
            assert!(
                rounds
                    .blocks
                    .iter()
                    .all(|b| b.credit.iter().all(|&c| c == 0))
            );
            rounds.repeats = false;
            let mut expected = Vec::new();
            let mut got = Vec::new();
            for _ in 0..3 {
                got.extend_from_slice(repeating.next());
            }
            while expected.len() < got.len() {
                expected.extend_from_slice(rounds.next());
            }
            assert_eq!(got, expected, "weights {weights:?}");
        }
    }

    #[test]
    fn single_backend_owns_every_slot() {
        let b = [MaglevBackend {
            key: "only",
            id: 42,
            weight: 3,
        }];
        let table = build_table(&b, SIZE).unwrap();
        assert_eq!(table.len(), SIZE as usize);
        assert!(table.iter().all(|&id| id == 42));
        // The smallest prime table works too.
        assert_eq!(build_table(&b, 2).unwrap(), [42, 42]);
    }

    #[test]
    fn zero_total_weight_gives_empty_table() {
        let keys = keys(3);
        assert!(
            build_table(&backends(&keys, &[0, 0, 0]), SIZE)
                .unwrap()
                .is_empty()
        );
        assert!(build_table(&[], SIZE).unwrap().is_empty());

        let mut out = vec![7u32; 4099];
        assert!(!fill_table(&backends(&keys, &[0, 0, 0]), &mut out).unwrap());
        assert!(out.iter().all(|&v| v == 7), "fill_table wrote to the slice");
    }

    #[test]
    fn fill_table_matches_build_table() {
        let keys = keys(20);
        let weights: Vec<u32> = (1..=20).collect();
        let b = backends(&keys, &weights);
        let mut out = vec![u32::MAX; 16_411];
        assert!(fill_table(&b, &mut out).unwrap());
        assert_eq!(out, build_table(&b, 16_411).unwrap());
    }

    #[test]
    fn non_prime_size_is_an_error() {
        let keys = keys(2);
        let b = backends(&keys, &[1, 1]);
        for (size, suggestion) in [(65_536, 65_537), (0, 2), (1, 2), (4, 5), (100, 101)] {
            match build_table(&b, size) {
                Err(MaglevError::NotPrime {
                    size: s,
                    suggestion: p,
                }) => assert_eq!((s, p), (size, suggestion)),
                other => panic!("size {size}: expected NotPrime, got {other:?}"),
            }
        }
        // Checked even when no backend would get a slot, so bad config shows up early.
        assert!(matches!(
            build_table(&[], 1000),
            Err(MaglevError::NotPrime { .. })
        ));
        // The slice form checks its length and leaves the slice alone.
        let mut out = vec![7u32; 1000];
        assert!(matches!(
            fill_table(&b, &mut out),
            Err(MaglevError::NotPrime { size: 1000, .. })
        ));
        assert!(out.iter().all(|&v| v == 7));
    }

    #[test]
    fn size_too_large_or_too_small_is_an_error() {
        let keys = keys(5);
        let b = backends(&keys, &[1, 1, 1, 0, 1]);
        // 16777259 is the first prime above 2^24.
        assert!(matches!(
            build_table(&b, 16_777_259),
            Err(MaglevError::TooLarge {
                size: 16_777_259,
                max: MAX_TABLE_SIZE
            })
        ));
        assert!(matches!(
            build_table(&b, 3),
            Err(MaglevError::TooSmall {
                size: 3,
                backends: 4
            })
        ));
        assert_eq!(build_table(&b, 5).unwrap().len(), 5);
        // A non-prime size close to the limit suggests the largest allowed prime.
        assert!(matches!(
            build_table(&b, MAX_TABLE_SIZE),
            Err(MaglevError::NotPrime {
                suggestion: 16_777_213,
                ..
            })
        ));
    }

    #[test]
    fn duplicate_keys_are_an_error() {
        let b = [
            MaglevBackend {
                key: "web-1",
                id: 0,
                weight: 1,
            },
            MaglevBackend {
                key: "web-2",
                id: 1,
                weight: 1,
            },
            MaglevBackend {
                key: "web-1",
                id: 2,
                weight: 0,
            },
        ];
        match build_table(&b, SIZE) {
            Err(MaglevError::DuplicateKey { key }) => assert_eq!(key, "web-1"),
            other => panic!("expected DuplicateKey, got {other:?}"),
        }
    }

    #[test]
    fn is_prime_known_values() {
        for p in [2, 3, 5, 7, 13, 251, 4099, 65_537, 16_777_213, 4_294_967_291] {
            assert!(is_prime(p), "{p} is prime");
        }
        for n in [0, 1, 4, 9, 25, 49, 65_536, 65_535, 16_777_216, u32::MAX] {
            assert!(!is_prime(n), "{n} is not prime");
        }
    }

    #[test]
    fn is_prime_matches_a_sieve() {
        const N: usize = 100_000;
        let mut sieve = vec![true; N];
        sieve[0] = false;
        sieve[1] = false;
        for i in 2..N {
            if sieve[i] {
                for j in (i * i..N).step_by(i) {
                    sieve[j] = false;
                }
            }
        }
        for (n, &prime) in sieve.iter().enumerate() {
            assert_eq!(is_prime(n as u32), prime, "is_prime({n})");
        }
    }

    /// Prints how long 100 backends take on 65537 slots; run with `--release --nocapture`.
    /// No assertion: the machine running the tests may be busy, which is also why it prints
    /// the fastest run next to the median.
    #[test]
    fn timing_100_backends() {
        let keys = keys(100);
        let equal = backends(&keys, &[1; 100]);
        let weights: Vec<u32> = (1..=100).collect();
        let weighted = backends(&keys, &weights);
        let mut out = vec![0u32; SIZE as usize];
        for (name, b) in [("equal weights", &equal), ("weights 1..=100", &weighted)] {
            let mut times: Vec<_> = (0..50)
                .map(|_| {
                    let start = std::time::Instant::now();
                    fill_table(b, &mut out).unwrap();
                    start.elapsed()
                })
                .collect();
            times.sort();
            println!(
                "maglev: 100 backends ({name}), {SIZE} slots: fastest {:?}, median {:?}",
                times[0], times[25]
            );
        }
    }
}
