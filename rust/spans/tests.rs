//! Unit tests of span and mask building.

use super::*;

/// "SYS:abc|Q:de?|A: fg." tokenized by hand: zero-width BOS, special markers, content.
fn sample() -> (Vec<u32>, SampleSpans, Vec<bool>) {
    // text:  S Y S : a b c | Q : d  e  ?  |  A  :     f  g  .
    // index: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19
    let offsets = vec![
        0, 0, // 0: zero-width BOS
        0, 4, // 1: "SYS:" special
        4, 6, // 2: "ab"
        6, 7, // 3: "c"
        7, 10, // 4: "|Q:" special
        10, 11, // 5: "d"
        11, 13, // 6: "e?"
        13, 16, // 7: "|A:" special
        16, 18, // 8: " f" (straddles: space is template text)
        18, 19, // 9: "g"
        19, 20, // 10: "."
    ];
    let spans = SampleSpans {
        system: Some(CharSpan::new(4, 7)),
        question: CharSpan::new(10, 13),
        answer: CharSpan::new(17, 20),
        text_len: 20,
    };
    let special = vec![
        true, true, false, false, true, false, false, true, false, false, false,
    ];
    (offsets, spans, special)
}

fn selected(m: &BatchMasks, k: usize) -> Vec<usize> {
    m.row(k)
        .iter()
        .enumerate()
        .filter_map(|(i, &b)| b.then_some(i))
        .collect()
}

fn run(
    offsets: &[u32],
    spans: &[SampleSpans],
    lengths: &[usize],
    special: Option<&[bool]>,
) -> Result<BatchMasks> {
    let batch = Batch {
        offsets,
        lengths,
        spans,
        special,
        sample_ids: &[],
        template: "test-template",
    };
    build_masks(&batch, &Strategy::ALL)
}

/// `sample()` repeated `n` times: flat offsets, spans and special-token flags.
fn tiled(n: usize) -> (Vec<u32>, Vec<SampleSpans>, Vec<bool>) {
    let (offsets, spans, special) = sample();
    let flat = offsets.iter().copied().cycle().take(offsets.len() * n);
    let flags = special.iter().copied().cycle().take(special.len() * n);
    (flat.collect(), vec![spans; n], flags.collect())
}

/// Masks of one sample (id "q-7", `offsets.len() / 2` tokens, no special-token flags).
fn one_sample<T: Offset>(
    offsets: &[T],
    spans: SampleSpans,
    strategies: &[Strategy],
) -> Result<BatchMasks> {
    let ids = ["q-7".to_string()];
    let batch = Batch {
        offsets,
        lengths: &[offsets.len() / 2],
        spans: &[spans],
        special: None,
        sample_ids: &ids,
        template: "tiny-chatml",
    };
    build_masks(&batch, strategies)
}

#[test]
fn all_strategies_on_one_sample() {
    let (offsets, spans, special) = sample();
    let m = run(&offsets, &[spans], &[11], Some(&special)).unwrap();
    let want: [&[usize]; 8] = [&[2, 3], &[3], &[6], &[7], &[7], &[8], &[10], &[8, 9, 10]];
    for (k, w) in want.iter().enumerate() {
        assert_eq!(selected(&m, k), *w, "{}", Strategy::ALL[k].name());
    }
    assert_eq!(m.tokens[0].answer, TokenSpan { first: 8, end: 11 });
}

#[test]
fn batch_rows_are_per_sample_and_parallel_matches_serial() {
    let (offsets, spans, special) = sample();
    let n = 200; // one rayon chunk; several: chunked_batch_matches_each_sample_alone
    let (flat, all, flags) = tiled(n);
    let m = run(&flat, &all, &vec![11; n], Some(&flags)).unwrap();
    let single = run(&offsets, &[spans], &[11], Some(&special)).unwrap();
    for k in 0..8 {
        for i in 0..n {
            assert_eq!(&m.row(k)[i * 11..(i + 1) * 11], single.row(k));
        }
    }
}

#[test]
fn zero_width_tokens_are_skipped_by_means() {
    let offsets = [0u32, 2, 5, 5, 2, 4];
    let spans = SampleSpans {
        system: None,
        question: CharSpan::new(0, 1),
        answer: CharSpan::new(0, 4),
        text_len: 4,
    };
    // 5 > text_len would be an error if the token were not zero-width.
    let m = one_sample(
        &offsets,
        spans,
        &[Strategy::AnswerMean, Strategy::QuestionLastSpecial],
    )
    .unwrap();
    assert_eq!(selected(&m, 0), vec![0, 2]);
    assert_eq!(selected(&m, 1), vec![1]);
}

#[test]
fn shared_character_tokens_are_allowed() {
    // An emoji split into two byte-level tokens with identical offsets.
    let offsets = [0u32, 1, 1, 2, 1, 2, 2, 3];
    let spans = SampleSpans {
        system: None,
        question: CharSpan::new(0, 1),
        answer: CharSpan::new(1, 2),
        text_len: 3,
    };
    let m = one_sample(
        &offsets,
        spans,
        &[Strategy::AnswerMean, Strategy::AnswerPrevious],
    )
    .unwrap();
    assert_eq!(selected(&m, 0), vec![1, 2]);
    assert_eq!(selected(&m, 1), vec![0]);
}

fn error_of(offsets: &[u32], spans: SampleSpans, strategies: &[Strategy]) -> Error {
    one_sample(offsets, spans, strategies).unwrap_err()
}

#[test]
fn errors_name_the_sample() {
    let ok = SampleSpans {
        system: None,
        question: CharSpan::new(0, 2),
        answer: CharSpan::new(2, 4),
        text_len: 4,
    };
    let offsets = [0u32, 2, 2, 4];
    let empty = SampleSpans {
        answer: CharSpan::new(4, 4),
        ..ok
    };
    let e = error_of(&offsets, empty, &[Strategy::AnswerMean]);
    assert!(
        matches!(e, Error::Span(_))
            && e.to_string().contains("'q-7'")
            && e.to_string().contains("empty")
    );

    let outside = SampleSpans {
        answer: CharSpan::new(2, 9),
        ..ok
    };
    let e = error_of(&offsets, outside, &[Strategy::AnswerMean]);
    assert!(matches!(e, Error::Span(_)) && e.to_string().contains("outside"));

    let e = error_of(&[2, 4, 0, 2], ok, &[Strategy::AnswerMean]);
    assert!(e.to_string().contains("not monotone"), "{e}");

    let e = error_of(&offsets, ok, &[Strategy::PersonaMean]);
    assert!(
        matches!(e, Error::Mask(_)) && e.to_string().contains("persona_mean"),
        "{e}"
    );

    let e = error_of(&offsets, ok, &[Strategy::QuestionLastSpecial]);
    assert!(
        e.to_string().contains("tiny-chatml") && e.to_string().contains("q-7"),
        "{e}"
    );

    let first = SampleSpans {
        question: CharSpan::new(2, 4),
        answer: CharSpan::new(0, 2),
        ..ok
    };
    let e = error_of(&offsets, first, &[Strategy::AnswerPrevious]);
    assert!(e.to_string().contains("answer_previous"), "{e}");
}

#[test]
fn shape_errors() {
    let (offsets, spans, _) = sample();
    let e = run(&offsets, &[spans], &[10], None).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)));
    let e = run(&offsets, &[spans, spans], &[11], None).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)));
}

#[test]
fn first_failing_sample_is_reported() {
    let n = 100;
    let (flat, mut all, flags) = tiled(n);
    for bad in [37, 80] {
        all[bad].answer = CharSpan::new(20, 20);
    }
    let e = run(&flat, &all, &vec![11; n], Some(&flags)).unwrap_err();
    assert!(e.to_string().contains("#37"), "{e}");
}

#[test]
fn negative_offsets_are_an_error_not_a_wrap() {
    let spans = SampleSpans {
        system: None,
        question: CharSpan::new(0, 2),
        answer: CharSpan::new(2, 4),
        text_len: 4,
    };
    let offsets = [0i64, 2, -1, 4];
    let e = one_sample(&offsets, spans, &[Strategy::AnswerMean]).unwrap_err();
    assert!(
        matches!(e, Error::Span(_)) && e.to_string().contains("negative"),
        "{e}"
    );
}

#[test]
fn parse_round_trips() {
    for s in Strategy::ALL {
        assert_eq!(Strategy::parse(s.name()).unwrap(), s);
    }
    assert!(Strategy::parse("answer").is_err());
}

/// `sample()` with a zero-width token inside the answer (12 tokens): `answer_mean` skips it.
fn sample_with_gap() -> (Vec<u32>, Vec<bool>) {
    let (mut offsets, _, mut special) = sample();
    offsets.splice(18..18, [18, 18]);
    special.insert(9, false);
    (offsets, special)
}

/// `n` samples alternating `sample()` and `sample_with_gap()`: flat offsets, spans, flags,
/// lengths.
fn mixed(n: usize) -> (Vec<u32>, Vec<SampleSpans>, Vec<bool>, Vec<usize>) {
    let (a, spans, a_flags) = sample();
    let (b, b_flags) = sample_with_gap();
    let (mut offsets, mut flags, mut lengths) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let (o, f) = if i % 2 == 0 {
            (&a, &a_flags)
        } else {
            (&b, &b_flags)
        };
        offsets.extend_from_slice(o);
        flags.extend_from_slice(f);
        lengths.push(f.len());
    }
    (offsets, vec![spans; n], flags, lengths)
}

#[test]
fn chunked_batch_matches_each_sample_alone() {
    // Enough tokens for several rayon chunks; strategies out of order and repeated.
    let n = 3 * build::CHUNK_TOKENS / 11 + 7;
    let (offsets, spans, flags, lengths) = mixed(n);
    let strategies = [
        Strategy::AnswerMean,
        Strategy::PersonaLast,
        Strategy::QuestionLastSpecial,
        Strategy::AnswerMean,
        Strategy::PersonaMean,
    ];
    let batch = Batch {
        offsets: &offsets,
        lengths: &lengths,
        spans: &spans,
        special: Some(&flags),
        sample_ids: &[],
        template: "test-template",
    };
    let m = build_masks(&batch, &strategies).unwrap();
    let (mut start, gap) = (0, sample_with_gap());
    for (i, &len) in lengths.iter().enumerate() {
        let (o, f) = if i % 2 == 0 {
            let (o, _, f) = sample();
            (o, f)
        } else {
            gap.clone()
        };
        let one = Batch {
            offsets: &o,
            lengths: &[len],
            spans: &spans[..1],
            special: Some(&f),
            sample_ids: &[],
            template: "test-template",
        };
        let alone = build_masks(&one, &strategies).unwrap();
        for k in 0..strategies.len() {
            assert_eq!(&m.row(k)[start..start + len], alone.row(k), "sample {i}");
        }
        assert_eq!(m.tokens[i], alone.tokens[0]);
        start += len;
    }
    // The zero-width token inside the second sample's answer is skipped by answer_mean.
    let second: Vec<usize> = (0..12).filter(|&t| m.row(0)[11 + t]).collect();
    assert_eq!(second, [8, 10, 11]);
}

#[test]
fn masks_into_writes_every_element_and_checks_the_buffer() {
    let n = build::CHUNK_TOKENS / 11 + 3;
    let (offsets, spans, flags, lengths) = mixed(n);
    let batch = Batch {
        offsets: &offsets,
        lengths: &lengths,
        spans: &spans,
        special: Some(&flags),
        sample_ids: &[],
        template: "test-template",
    };
    let want = build_masks(&batch, &Strategy::ALL).unwrap();
    // A buffer of stale `true`s: every element must be overwritten, false ones included.
    let mut out = vec![std::mem::MaybeUninit::new(true); 8 * want.n_total];
    let tokens = build_masks_into(&batch, &Strategy::ALL, &mut out).unwrap();
    // SAFETY: every element was initialised (to `true`) before the call.
    let got: Vec<bool> = out.iter().map(|b| unsafe { b.assume_init() }).collect();
    assert_eq!(got, want.masks);
    assert_eq!(tokens, want.tokens);
    let e = build_masks_into(&batch, &Strategy::ALL, &mut out[1..]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
}

#[test]
fn first_failing_sample_is_reported_across_chunks() {
    let n = 4 * build::CHUNK_TOKENS / 11;
    let (offsets, mut spans, flags, lengths) = mixed(n);
    // Failures in the last chunk and in a middle one: the lowest index is named, however
    // the chunks were scheduled.
    for bad in [n - 2, n / 2 + 1] {
        spans[bad].answer = CharSpan::new(20, 20);
    }
    let batch = Batch {
        offsets: &offsets,
        lengths: &lengths,
        spans: &spans,
        special: Some(&flags),
        sample_ids: &[],
        template: "test-template",
    };
    let e = build_masks(&batch, &Strategy::ALL).unwrap_err();
    assert!(e.to_string().contains(&format!("#{}", n / 2 + 1)), "{e}");
}

#[test]
fn span_search_matches_checking_every_token() {
    // Monotone content tokens with zero-width tokens of any value in between, and spans
    // anywhere (empty, straddling, outside): the binary searches agree with the rule.
    let mut x = 0x5eed_u64;
    let mut below = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut zero_width = Vec::new();
    for _ in 0..2_000 {
        let (mut offsets, mut end) = (Vec::<i64>::new(), 0i64);
        for _ in 0..below(40) {
            if below(5) == 0 {
                let at = below(end as u64 + 10) as i64;
                offsets.extend([at, at]);
            } else {
                let start = end + below(2) as i64;
                end = start + 1 + below(4) as i64;
                offsets.extend([start, end]);
            }
        }
        let text_len = end as u64 + 10;
        assert!(build::offsets_valid(&offsets, text_len, &mut zero_width));
        for _ in 0..10 {
            let a = below(text_len);
            let span = CharSpan::new(a, a + below(text_len - a + 1));
            let hits: Vec<usize> = (0..offsets.len() / 2)
                .filter(|&t| {
                    let (s, e) = (offsets[2 * t] as u64, offsets[2 * t + 1] as u64);
                    s != e && s < span.end && e > span.start
                })
                .collect();
            let want = hits.first().map(|&f| (f, *hits.last().unwrap()));
            assert_eq!(
                build::token_range(&offsets, span),
                want,
                "{offsets:?} {span:?}"
            );
        }
    }
}

#[test]
fn fast_check_agrees_with_checking_one_token_at_a_time() {
    // Tokens that go backwards right after zero-width runs, at the start, at the end, past
    // the text, below zero: the branch-free check and the token-by-token one accept the same offsets.
    let mut x = 0xfeed_u64;
    let mut below = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut zero_width = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..5_000 {
        let mut offsets = Vec::<i64>::new();
        for _ in 0..below(12) {
            // Now and then a negative offset.
            let at = below(13) as i64 - 1;
            let width = if below(3) == 0 {
                0
            } else {
                1 + below(3) as i64
            };
            offsets.extend([at, at + width]);
        }
        let text_len = 8 + below(8);
        let ok = build::offsets_valid(&offsets, text_len, &mut zero_width);
        assert_eq!(
            ok,
            build::first_bad(&offsets, text_len).is_none(),
            "{offsets:?}"
        );
        let want: Vec<usize> = (0..offsets.len() / 2)
            .filter(|&t| offsets[2 * t] == offsets[2 * t + 1])
            .collect();
        assert_eq!(zero_width, want);
        if ok {
            accepted += 1
        } else {
            refused += 1
        }
    }
    assert!(accepted > 100 && refused > 100, "{accepted} / {refused}");
}
