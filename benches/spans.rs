//! Criterion bench of the batch mask builder: 3,000 synthetic chat prompts of 300-2,000
//! tokens (zero-width BOS, special markers, contiguous content tokens; int64 offsets as
//! Python passes them), all eight strategies, beside the memory limit: reading the offsets
//! once and filling an output of the same size.
//! Run: `cargo bench --bench spans` (`RAYON_NUM_THREADS=1` for one core).

use std::hint::black_box;

use _core::spans::{build_masks, Batch, CharSpan, SampleSpans, Strategy};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Deterministic xorshift so the bench needs no extra dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Data {
    offsets: Vec<i64>,
    lengths: Vec<usize>,
    spans: Vec<SampleSpans>,
    special: Vec<bool>,
    ids: Vec<String>,
}

impl Data {
    /// Append a token `width` characters wide at the end of the current text.
    fn push(&mut self, width: i64, special: bool) {
        let end = self.end();
        self.offsets.extend([end, end + width]);
        self.special.push(special);
    }

    /// A turn marker (special) then `count` content tokens; returns the content's span.
    fn content(&mut self, count: usize, rng: &mut Rng) -> CharSpan {
        self.push(12, true);
        let start = self.end();
        for _ in 0..count {
            self.push(1 + rng.below(6) as i64, false);
        }
        CharSpan::new(start as u64, self.end() as u64)
    }

    fn end(&self) -> i64 {
        *self.offsets.last().unwrap_or(&0)
    }
}

/// One sample: BOS (zero-width), then system, question and answer turns, each opened by a
/// special marker, and a closing marker; content tokens are 1-6 characters wide.
fn synthetic(n_samples: usize, seed: u64) -> Data {
    let mut rng = Rng(seed);
    let mut d = Data {
        offsets: Vec::new(),
        lengths: Vec::new(),
        spans: Vec::new(),
        special: Vec::new(),
        ids: Vec::new(),
    };
    for i in 0..n_samples {
        let n = 300 + rng.below(1701) as usize;
        let n_system = 20 + rng.below(100) as usize;
        let n_question = 10 + rng.below(40) as usize;
        let n_answer = n - 5 - n_system - n_question;
        // A zero-width BOS; it also restarts the offsets at 0 for this sample's text.
        d.offsets.extend([0, 0]);
        d.special.push(true);
        let system = d.content(n_system, &mut rng);
        let question = d.content(n_question, &mut rng);
        let answer = d.content(n_answer, &mut rng);
        d.push(12, true);
        d.lengths.push(n);
        d.spans.push(SampleSpans {
            system: Some(system),
            question,
            answer,
            text_len: d.end() as u64,
        });
        d.ids.push(format!("q{i}"));
    }
    d
}

fn bench(c: &mut Criterion) {
    let data = synthetic(3_000, 0x5eed);
    let total: usize = data.lengths.iter().sum();
    let batch = Batch {
        offsets: &data.offsets,
        lengths: &data.lengths,
        spans: &data.spans,
        special: Some(&data.special),
        sample_ids: &data.ids,
        template: "synthetic",
    };
    build_masks(&batch, &Strategy::ALL).expect("synthetic batch is valid");
    let mut group = c.benchmark_group("build_masks");
    group.sample_size(20);
    group.throughput(Throughput::Elements(total as u64));
    group.bench_function("3k_samples_all_8_strategies", |b| {
        b.iter(|| build_masks(&batch, &Strategy::ALL).expect("valid"))
    });
    group.bench_function("3k_samples_answer_mean", |b| {
        b.iter(|| build_masks(&batch, &[Strategy::AnswerMean]).expect("valid"))
    });
    // The floor: every offset read once, a fresh output of the same size written once.
    group.bench_function("3k_samples_limit_read_offsets_fill_output", |b| {
        b.iter(|| {
            let sum: i64 = black_box(&data.offsets).iter().sum();
            let masks = vec![true; Strategy::ALL.len() * total];
            (black_box(sum), black_box(masks))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
