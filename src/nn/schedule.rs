//! Learning-rate schedules beside NNFS's decay: step decay, cosine annealing, and a
//! linear warm-up in front of either. A schedule scales the optimizer's learning rate
//! (after its `lr / (1 + decay·t)`) by a factor of the step number `t`.

/// The factor a learning rate is scaled by at step `t`; `#[non_exhaustive]`, made by
/// its constructors. The default is the constant 1 (NNFS's decay alone).
///
/// ```
/// use fusegrad::nn::Schedule;
/// let s = Schedule::cosine(1000, 0.1).with_warmup(100);
/// assert_eq!(s.factor(0), 0.01);           // warm-up: (t + 1) / 100
/// assert_eq!(s.factor(99), 1.0);
/// assert!((s.factor(600) - 0.55).abs() < 1e-6); // half-way down the cosine, 1 → 0.1
/// assert_eq!(s.factor(5000), 0.1);          // stays at the floor
/// assert_eq!(Schedule::step(100, 0.5).factor(250), 0.25);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Default)]
#[non_exhaustive]
pub struct Schedule {
    kind: Kind,
    warmup: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Default)]
enum Kind {
    #[default]
    Constant,
    Step {
        every: u64,
        factor: f32,
    },
    Cosine {
        steps: u64,
        min_factor: f32,
    },
}

impl Schedule {
    /// The factor 1 at every step.
    pub fn constant() -> Self {
        Schedule::default()
    }

    /// `factor^⌊t / every⌋`: the rate multiplied by `factor` every `every` steps.
    ///
    /// # Panics
    /// When `every` is 0 or `factor` is not in (0, 1].
    pub fn step(every: u64, factor: f32) -> Self {
        assert!(every > 0, "Schedule::step: every must be at least 1");
        assert!(factor > 0.0 && factor <= 1.0, "Schedule::step: factor must be in (0, 1], got {factor}");
        Schedule { kind: Kind::Step { every, factor }, warmup: 0 }
    }

    /// Cosine annealing from 1 down to `min_factor` over `steps` steps (after the
    /// warm-up), then `min_factor`.
    ///
    /// # Panics
    /// When `steps` is 0 or `min_factor` is not in [0, 1].
    pub fn cosine(steps: u64, min_factor: f32) -> Self {
        assert!(steps > 0, "Schedule::cosine: steps must be at least 1");
        assert!((0.0..=1.0).contains(&min_factor), "Schedule::cosine: min_factor must be in [0, 1], got {min_factor}");
        Schedule { kind: Kind::Cosine { steps, min_factor }, warmup: 0 }
    }

    /// The same schedule after a linear warm-up: `(t + 1) / steps` for the first
    /// `steps` steps, the schedule counted from the end of the warm-up.
    pub fn with_warmup(mut self, steps: u64) -> Self {
        self.warmup = steps;
        self
    }

    /// The factor at step `t` (0-based: the number of updates done before it).
    pub fn factor(&self, t: u64) -> f32 {
        if t < self.warmup {
            return (t + 1) as f32 / self.warmup as f32;
        }
        let t = t - self.warmup;
        match self.kind {
            Kind::Constant => 1.0,
            Kind::Step { every, factor } => factor.powi((t / every).min(i32::MAX as u64) as i32),
            Kind::Cosine { steps, min_factor } => {
                let progress = t.min(steps) as f64 / steps as f64;
                let cos = (1.0 + (std::f64::consts::PI * progress).cos()) / 2.0;
                (min_factor as f64 + (1.0 - min_factor as f64) * cos) as f32
            }
        }
    }

    pub(crate) fn is_constant(&self) -> bool {
        *self == Schedule::default()
    }
}
