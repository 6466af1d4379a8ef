//! Checking a batch and building its token spans and masks (the rules in the module docs).

use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::{Batch, BatchMasks, CharSpan, Offset, SampleTokens, Strategy, TokenSpan};
use crate::error::{Error, Result};

/// Samples are handed to rayon in chunks of at least this many tokens: big enough that a
/// task's overhead is noise, small enough (a few hundred KB of offsets) to balance two cores.
pub(super) const CHUNK_TOKENS: usize = 1 << 15;

impl<'a, T: Offset> Batch<'a, T> {
    fn sample_name(&self, i: usize) -> String {
        match self.sample_ids.get(i) {
            Some(id) => format!("sample '{id}'"),
            None => format!("sample #{i}"),
        }
    }

    fn validate_shapes(&self) -> Result<Vec<usize>> {
        let n = self.lengths.len();
        if self.spans.len() != n {
            return Err(Error::InvalidArgument(format!(
                "{} samples have lengths but {} have spans; pass one span row per sample",
                n,
                self.spans.len()
            )));
        }
        if !self.sample_ids.is_empty() && self.sample_ids.len() != n {
            return Err(Error::InvalidArgument(format!(
                "{} sample ids for {} samples; pass one id per sample (or none)",
                self.sample_ids.len(),
                n
            )));
        }
        let mut starts = Vec::with_capacity(n);
        let mut total = 0usize;
        for &len in self.lengths {
            starts.push(total);
            total = total.checked_add(len).ok_or_else(|| {
                Error::InvalidArgument("sample lengths overflow the address space".into())
            })?;
        }
        if self.offsets.len() != 2 * total {
            return Err(Error::InvalidArgument(format!(
                "offsets hold {} values but the sample lengths sum to {total} tokens; \
                 offsets must be an (n_total_tokens, 2) array",
                self.offsets.len()
            )));
        }
        if let Some(special) = self.special {
            if special.len() != total {
                return Err(Error::InvalidArgument(format!(
                    "special flags hold {} values for {total} tokens; pass one flag per token",
                    special.len()
                )));
            }
        }
        Ok(starts)
    }

    /// Token spans of sample `i` (whose tokens start at flat index `start`), after checking
    /// its spans and offsets, and checking every requested strategy selects a token. Its
    /// zero-width tokens are left in `zero_width` (ascending), so the masks need no second
    /// read of the offsets.
    fn sample_tokens(
        &self,
        i: usize,
        start: usize,
        strategies: &[Strategy],
        zero_width: &mut Vec<usize>,
    ) -> Result<SampleTokens> {
        let name = || self.sample_name(i);
        let spans = &self.spans[i];
        let n = self.lengths[i];
        let check = |what: &str, span: CharSpan| -> Result<()> {
            if span.start > span.end || span.end > spans.text_len {
                return Err(Error::Span(format!(
                    "{}: the {what} span {}..{} lies outside the rendered prompt of {} characters",
                    name(),
                    span.start,
                    span.end,
                    spans.text_len
                )));
            }
            Ok(())
        };
        if let Some(system) = spans.system {
            check("system prompt", system)?;
        }
        check("question", spans.question)?;
        check("answer", spans.answer)?;
        if spans.answer.start == spans.answer.end {
            return Err(Error::Span(format!(
                "{}: the answer is empty; every QA pair needs a non-empty answer",
                name()
            )));
        }

        let offsets = &self.offsets[2 * start..2 * (start + n)];
        let bounds = scan(offsets, spans, zero_width)
            .map_err(|bad| Error::Span(format!("{}: {}", name(), bad.message(spans.text_len))))?;
        let to_span = |b: Option<(usize, usize)>| {
            b.map(|(first, last)| TokenSpan {
                first,
                end: last + 1,
            })
        };
        let answer = to_span(bounds[2]).ok_or_else(|| {
            Error::Span(format!(
                "{}: the answer (characters {}..{}) covers no token",
                name(),
                spans.answer.start,
                spans.answer.end
            ))
        })?;
        let question = to_span(bounds[1]);
        let is_special = |t: usize| {
            offsets[2 * t].to_u64() == offsets[2 * t + 1].to_u64()
                || self.special.is_some_and(|flags| flags[start + t])
        };
        let question_special = question.map(|q| q.end).filter(|&t| t < n && is_special(t));
        let tokens = SampleTokens {
            system: to_span(bounds[0]),
            question,
            answer,
            question_special,
        };
        for &strategy in strategies {
            self.check_selects(i, &tokens, strategy)?;
        }
        Ok(tokens)
    }

    fn check_selects(&self, i: usize, tokens: &SampleTokens, strategy: Strategy) -> Result<()> {
        let why = match strategy {
            Strategy::PersonaMean | Strategy::PersonaLast if tokens.system.is_none() => {
                if self.spans[i].system.is_none() {
                    "the prompt has no system prompt (baseline persona)"
                } else {
                    "the system prompt covers no token"
                }
            }
            Strategy::QuestionLast if tokens.question.is_none() => "the question covers no token",
            Strategy::QuestionLastSpecial if tokens.question_special.is_none() => {
                return Err(Error::Mask(format!(
                    "{}: question_last_special needs a special token right after the question, \
                     but the chat template '{}' puts {} there; use question_last instead",
                    self.sample_name(i),
                    self.template,
                    if tokens.question.is_some() {
                        "an ordinary token"
                    } else {
                        "no question token before it"
                    }
                )));
            }
            Strategy::AnswerPrevious if tokens.answer.first == 0 => {
                "the answer starts the prompt, so no token precedes it"
            }
            _ => return Ok(()),
        };
        Err(Error::Mask(format!(
            "{}: mask strategy {} selects no token under chat template '{}': {why}",
            self.sample_name(i),
            strategy.name(),
            self.template
        )))
    }

    /// Write one sample's segment (`local..` in `rows[k]`, for `strategies[k]`) of every mask
    /// row: every element is written, so the rows may start uninitialised. `zero_width` are
    /// the sample's zero-width tokens (ascending), skipped by the `*_mean` strategies.
    fn fill_sample(
        strategies: &[Strategy],
        tokens: &SampleTokens,
        n: usize,
        zero_width: &[usize],
        rows: &mut [&mut [MaybeUninit<bool>]],
        local: usize,
    ) {
        const NO: MaybeUninit<bool> = MaybeUninit::new(false);
        const YES: MaybeUninit<bool> = MaybeUninit::new(true);
        let set_one = |row: &mut [MaybeUninit<bool>], t: Option<usize>| {
            row.fill(NO);
            if let Some(t) = t {
                row[t] = YES;
            }
        };
        // The tokens of `span` that are not zero-width: memsets and a few stores.
        let set_range = |row: &mut [MaybeUninit<bool>], span: Option<TokenSpan>| {
            let Some(span) = span else {
                row.fill(NO);
                return;
            };
            row[..span.first].fill(NO);
            row[span.first..span.end].fill(YES);
            row[span.end..].fill(NO);
            let lo = zero_width.partition_point(|&t| t < span.first);
            for &t in zero_width[lo..].iter().take_while(|&&t| t < span.end) {
                row[t] = NO;
            }
        };
        // sample_tokens checked every requested strategy selects a token, so each is Some.
        for (row, &strategy) in rows.iter_mut().zip(strategies) {
            let row = &mut row[local..local + n];
            match strategy {
                Strategy::PersonaMean => set_range(row, tokens.system),
                Strategy::PersonaLast => set_one(row, tokens.system.map(TokenSpan::last)),
                Strategy::QuestionLast => set_one(row, tokens.question.map(TokenSpan::last)),
                Strategy::QuestionLastSpecial => set_one(row, tokens.question_special),
                Strategy::AnswerPrevious => set_one(row, tokens.answer.first.checked_sub(1)),
                Strategy::AnswerFirst => set_one(row, Some(tokens.answer.first)),
                Strategy::AnswerLast => set_one(row, Some(tokens.answer.last())),
                Strategy::AnswerMean => set_range(row, Some(tokens.answer)),
            }
        }
    }
}

/// Why a token's offsets are refused (`scan`); turned into the message only on an error.
pub(super) enum BadToken {
    Negative(usize),
    Outside(usize, u64, u64),
    Backwards(usize, (u64, u64), (u64, u64)),
}

impl BadToken {
    #[cold]
    fn message(&self, text_len: u64) -> String {
        match *self {
            BadToken::Negative(t) => format!("token {t} has a negative offset"),
            BadToken::Outside(t, s, e) => format!(
                "token {t} has offsets ({s}, {e}) outside the prompt of {text_len} characters"
            ),
            BadToken::Backwards(t, (s, e), (ps, pe)) => format!(
                "offsets are not monotone at token {t}: ({s}, {e}) after ({ps}, {pe}); \
                 tokenize the rendered prompt in one call"
            ),
        }
    }
}

/// One read of a sample's offsets (`2 x n`): checks every token (the rules in the module
/// docs), collects the zero-width ones into `zero_width`, and returns, per content span
/// (system, question, answer), the first and last token sharing a character with it.
///
/// The read is `offsets_valid`, a loop whose only branch is the rare zero-width one; the
/// spans then come from binary searches, which the checked order makes exact. Only a sample
/// with a bad token takes `first_bad`, the plain token-by-token loop, to name the first one.
fn scan<T: Offset>(
    offsets: &[T],
    spans: &super::SampleSpans,
    zero_width: &mut Vec<usize>,
) -> std::result::Result<[Option<(usize, usize)>; 3], BadToken> {
    if !offsets_valid(offsets, spans.text_len, zero_width) {
        return Err(first_bad(offsets, spans.text_len)
            .expect("offsets_valid and first_bad apply the same rules"));
    }
    // An absent system span is `0..0`, which no token (start < end) shares a character with.
    let system = spans.system.unwrap_or(CharSpan::new(0, 0));
    Ok([system, spans.question, spans.answer].map(|span| token_range(offsets, span)))
}

fn start_end<T: Offset>(offsets: &[T], t: usize) -> (u64, u64) {
    let value = |x: T| x.to_u64().unwrap_or(0); // only called on checked offsets
    (value(offsets[2 * t]), value(offsets[2 * t + 1]))
}

/// Whether every token passes the checks; the zero-width tokens are left in `zero_width`.
///
/// Each content token's order is checked against the token before it when that one is a
/// content token too (no loop-carried choice); after a run of zero-width tokens, the next
/// content token is checked against the last one before the run, below.
pub(super) fn offsets_valid<T: Offset>(
    offsets: &[T],
    text_len: u64,
    zero_width: &mut Vec<usize>,
) -> bool {
    zero_width.clear();
    let text_len = i64::try_from(text_len).unwrap_or(i64::MAX);
    let (mut prev_start, mut prev_end, mut prev_content) = (0i64, 0i64, false);
    let mut bad = false;
    for (t, pair) in offsets.chunks_exact(2).enumerate() {
        let (s, e) = (pair[0].to_i64(), pair[1].to_i64());
        bad |= (s | e) < 0;
        let content = s != e;
        if !content {
            zero_width.push(t);
        }
        let backwards = prev_content & ((s < prev_start) | (e < prev_end));
        bad |= content & ((s > e) | (e > text_len) | backwards);
        (prev_start, prev_end, prev_content) = (s, e, content);
    }
    let n = offsets.len() / 2;
    let mut run_start = 0;
    for (k, &z) in zero_width.iter().enumerate() {
        if k == 0 || zero_width[k - 1] + 1 != z {
            run_start = z;
        }
        let run_ends = zero_width.get(k + 1) != Some(&(z + 1));
        if run_ends && run_start > 0 && z + 1 < n {
            let (before, after) = (start_end(offsets, run_start - 1), start_end(offsets, z + 1));
            bad |= after.0 < before.0 || after.1 < before.1;
        }
    }
    !bad
}

/// The first bad token, checking one token at a time (the error path of `scan`).
#[cold]
pub(super) fn first_bad<T: Offset>(offsets: &[T], text_len: u64) -> Option<BadToken> {
    let (mut prev_start, mut prev_end) = (0u64, 0u64);
    for (t, pair) in offsets.chunks_exact(2).enumerate() {
        let (Some(s), Some(e)) = (pair[0].to_u64(), pair[1].to_u64()) else {
            return Some(BadToken::Negative(t));
        };
        if s == e {
            continue;
        }
        if s > e || e > text_len {
            return Some(BadToken::Outside(t, s, e));
        }
        if s < prev_start || e < prev_end {
            return Some(BadToken::Backwards(t, (s, e), (prev_start, prev_end)));
        }
        (prev_start, prev_end) = (s, e);
    }
    None
}

/// The first and last token sharing a character with `span` (`start < span.end && end >
/// span.start`), on checked offsets: among the tokens that are not zero-width, starts and
/// ends never decrease, so `end > span.start` holds on a suffix of them and `start <
/// span.end` on a prefix, and the tokens in both are one run.
pub(super) fn token_range<T: Offset>(offsets: &[T], span: CharSpan) -> Option<(usize, usize)> {
    let first = partition(offsets, |_, e| e > span.start);
    let mut end = partition(offsets, |s, _| s >= span.end);
    while end > 0 && is_zero_width(offsets, end - 1) {
        end -= 1;
    }
    (first < end).then(|| (first, end - 1))
}

fn is_zero_width<T: Offset>(offsets: &[T], t: usize) -> bool {
    let (s, e) = start_end(offsets, t);
    s == e
}

/// The first token that is not zero-width and for which `pred(start, end)` holds, where
/// `pred` is false then true over those tokens; the token count when there is none.
fn partition<T: Offset>(offsets: &[T], pred: impl Fn(u64, u64) -> bool) -> usize {
    let n = offsets.len() / 2;
    let (mut lo, mut hi) = (0, n);
    // Invariant: pred is false on every content token before `lo`, true on every one from `hi`.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let mut m = mid; // the first content token in mid..hi
        while m < hi && is_zero_width(offsets, m) {
            m += 1;
        }
        if m == hi {
            hi = mid;
        } else {
            let (s, e) = start_end(offsets, m);
            if pred(s, e) {
                hi = m;
            } else {
                lo = m + 1;
            }
        }
    }
    while lo < n && is_zero_width(offsets, lo) {
        lo += 1;
    }
    lo
}

/// Whole samples `samples` (tokens `token0..token0 + n_tokens`) and their segment of every
/// mask row, one rayon task.
struct Chunk<'a> {
    samples: Range<usize>,
    token0: usize,
    n_tokens: usize,
    rows: Vec<&'a mut [MaybeUninit<bool>]>,
}

/// Token spans and masks of every requested strategy for a whole batch.
///
/// Fails on the first (lowest-index) invalid sample, so the error does not depend on
/// thread scheduling.
pub fn build_masks<T: Offset>(batch: &Batch<'_, T>, strategies: &[Strategy]) -> Result<BatchMasks> {
    let n_total = batch.offsets.len() / 2;
    let len = strategies.len().checked_mul(n_total).ok_or_else(|| {
        Error::InvalidArgument("the mask array overflows the address space".into())
    })?;
    let mut masks = Vec::with_capacity(len);
    let tokens = build_masks_into(batch, strategies, &mut masks.spare_capacity_mut()[..len])?;
    // SAFETY: build_masks_into returned Ok, so it wrote every one of the `len` elements.
    unsafe { masks.set_len(len) };
    Ok(BatchMasks {
        strategies: strategies.to_vec(),
        n_total,
        masks,
        tokens,
    })
}

/// `build_masks` writing the masks into `out` (`strategies.len() x n_total`, row-major; it
/// may be uninitialised, e.g. a fresh numpy buffer) and returning the token spans.
///
/// One pass per sample: its offsets are read once (checks, spans, zero-width tokens), then its
/// segment of every row is written with memsets. Samples run on rayon in chunks of
/// whole samples. On `Ok` every element of `out` is written; on `Err` its contents are
/// unspecified.
pub fn build_masks_into<T: Offset>(
    batch: &Batch<'_, T>,
    strategies: &[Strategy],
    out: &mut [MaybeUninit<bool>],
) -> Result<Vec<SampleTokens>> {
    let starts = batch.validate_shapes()?;
    let n_total = batch.offsets.len() / 2;
    if out.len() != strategies.len() * n_total {
        return Err(Error::InvalidArgument(format!(
            "the mask buffer holds {} values for {} strategies x {n_total} tokens",
            out.len(),
            strategies.len()
        )));
    }
    // Chunks of whole samples, each with its segment of every row (cut in token order).
    let mut chunks: Vec<Chunk<'_>> = Vec::new();
    let mut first = 0;
    for i in 0..starts.len() {
        let n_tokens = starts[i] + batch.lengths[i] - starts[first];
        if n_tokens >= CHUNK_TOKENS || i + 1 == starts.len() {
            chunks.push(Chunk {
                samples: first..i + 1,
                token0: starts[first],
                n_tokens,
                rows: Vec::with_capacity(strategies.len()),
            });
            first = i + 1;
        }
    }
    if n_total > 0 {
        for row in out.chunks_mut(n_total) {
            let mut rest = row;
            for chunk in &mut chunks {
                let (segment, tail) = rest.split_at_mut(chunk.n_tokens);
                chunk.rows.push(segment);
                rest = tail;
            }
        }
    }
    let run_chunk = |mut chunk: Chunk<'_>| {
        let mut tokens = Vec::with_capacity(chunk.samples.len());
        let mut zero_width = Vec::new(); // scratch, reused by the chunk's samples
        for i in chunk.samples.clone() {
            let (start, n) = (starts[i], batch.lengths[i]);
            let sample = batch.sample_tokens(i, start, strategies, &mut zero_width)?;
            let local = start - chunk.token0;
            Batch::<T>::fill_sample(strategies, &sample, n, &zero_width, &mut chunk.rows, local);
            tokens.push(sample);
        }
        Ok(tokens)
    };
    // Every chunk's result, in order, so the first error is the lowest-index sample's. A
    // one-thread pool runs them here: handing them to its worker only adds a wake-up.
    let parallel = chunks.len() > 1 && rayon::current_num_threads() > 1;
    let results: Vec<Result<Vec<SampleTokens>>> = if parallel {
        chunks.into_par_iter().map(run_chunk).collect()
    } else {
        chunks.into_iter().map(run_chunk).collect()
    };
    let mut tokens = Vec::with_capacity(starts.len());
    for chunk in results {
        tokens.extend(chunk?);
    }
    Ok(tokens)
}
