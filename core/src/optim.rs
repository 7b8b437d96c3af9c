//! Optimisers for the engine's trained tensors: Adam, AdamW and SGD with
//! momentum, with learning-rate schedules, and state that can be saved and
//! restored exactly (for checkpoints and `--resume`).
//!
//! Why not `candle_nn::optim`: the engine must checkpoint the moment
//! estimates and the step count bit for bit, mask and renormalise the
//! parameter between steps, and offer SGD with momentum, none of which
//! `candle_nn::AdamW` exposes.
//!
//! The update rules follow PyTorch's `torch.optim.Adam`, `AdamW` and `SGD`
//! (dampening 0, no Nesterov):
//! <https://pytorch.org/docs/stable/generated/torch.optim.Adam.html>,
//! <https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html>,
//! <https://pytorch.org/docs/stable/generated/torch.optim.SGD.html>.

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use crate::recipe::{Optimizer as Settings, OptimizerKind, Schedule};
use crate::{Error, Result};

/// Adam's ε, PyTorch's default.
pub const ADAM_EPS: f64 = 1e-8;

/// The learning rate at 0-based `step` (the step about to be taken) of a
/// run of `total` steps.
///
/// - `constant`: `lr`.
/// - `cosine`: linear warm-up `lr·(step+1)/warmup` for `step < warmup`, then
///   `lr·(r + (1−r)·(1 + cos(π·p))/2)` with `p` going from 0 to 1 over the
///   remaining steps and `r = final_ratio`.
/// - `step`: `lr·gamma^⌊step/every⌋`.
pub fn learning_rate(settings: &Settings, step: usize, total: usize) -> f64 {
    let lr = settings.lr as f64;
    match settings.schedule {
        Schedule::Constant => lr,
        Schedule::Cosine { warmup, final_ratio } => {
            if step < warmup {
                return lr * (step + 1) as f64 / warmup as f64;
            }
            let span = total.saturating_sub(warmup).max(1);
            let p = ((step - warmup) as f64 / span as f64).clamp(0.0, 1.0);
            let r = final_ratio as f64;
            lr * (r + (1.0 - r) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
        }
        Schedule::Step { every, gamma } => lr * (gamma as f64).powi((step / every.max(1)) as i32),
        Schedule::Halvings { count } => lr * 0.5f64.powi(halvings_before(step, total, count) as i32),
    }
}

/// How many times `Schedule::Halvings { count }` has halved the rate by
/// 0-based step `step` of `total`, with LELSD's arithmetic
/// (<https://github.com/IVRL/LELSD/blob/main/lelsd.py>, `fit`:
/// `lr_decay_steps = num_batches // (num_lr_halvings + 1)`, and before step
/// `i`, `if i % lr_decay_steps == lr_decay_steps - 1: lr /= 2`). The rate of
/// step `i` is therefore `lr / 2^((i + 1) // d)` with `d = total // (count +
/// 1)`: when `count + 1` divides `total`, the last step gets one more
/// halving than `count` (200 steps, count 3: halvings before steps 49, 99,
/// 149 and 199), exactly as the reference runs.
pub fn halvings_before(step: usize, total: usize, count: usize) -> usize {
    let d = (total / (count + 1)).max(1);
    (step + 1) / d
}

/// One optimiser over one trained tensor. Cloning it is cheap (the
/// moments are shared, immutable tensors) and gives a state to go back to.
#[derive(Debug, Clone)]
pub struct Optimizer {
    settings: Settings,
    /// Steps taken (Adam's `t`).
    t: u64,
    /// Adam's first moment, or SGD's momentum buffer.
    m: Option<Tensor>,
    /// Adam's second moment.
    v: Option<Tensor>,
}

impl Optimizer {
    /// A fresh optimiser (no state yet).
    pub fn new(settings: &Settings) -> Self {
        Self { settings: settings.clone(), t: 0, m: None, v: None }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// One update of `param` with gradient `grad` at learning rate `lr`.
    pub fn step(&mut self, param: &Var, grad: &Tensor, lr: f64) -> Result<()> {
        let s = &self.settings;
        let p = param.as_tensor().detach();
        let wd = s.weight_decay as f64;
        self.t += 1;
        let next = match s.kind {
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                let (b1, b2) = (s.betas[0] as f64, s.betas[1] as f64);
                // Adam: L2 penalty in the gradient; AdamW: decoupled decay.
                let g = if s.kind == OptimizerKind::Adam && wd != 0.0 { (grad + (&p * wd)?)? } else { grad.clone() };
                let m = match &self.m {
                    Some(m) => ((m * b1)? + (&g * (1.0 - b1))?)?,
                    None => (&g * (1.0 - b1))?,
                };
                let v = match &self.v {
                    Some(v) => ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?,
                    None => (g.sqr()? * (1.0 - b2))?,
                };
                let t = self.t as i32;
                let bc1 = 1.0 - b1.powi(t);
                let bc2 = 1.0 - b2.powi(t);
                let denom = ((&v / bc2)?.sqrt()? + ADAM_EPS)?;
                let update = ((&m / bc1)? / denom)?;
                let base = if s.kind == OptimizerKind::Adamw && wd != 0.0 { (&p * (1.0 - lr * wd))? } else { p };
                self.m = Some(m);
                self.v = Some(v);
                (base - (update * lr)?)?
            }
            OptimizerKind::Sgd => {
                let g = if wd != 0.0 { (grad + (&p * wd)?)? } else { grad.clone() };
                let mu = s.momentum as f64;
                let buf = match (&self.m, mu > 0.0) {
                    (Some(b), true) => ((b * mu)? + &g)?,
                    _ => g,
                };
                let next = (&p - (&buf * lr)?)?;
                self.m = Some(buf);
                next
            }
        };
        param.set(&next)?;
        Ok(())
    }

    /// The state as named tensors (`opt.m`, `opt.v`) and the step count,
    /// for a checkpoint.
    pub fn state(&self) -> (HashMap<String, Tensor>, u64) {
        let mut out = HashMap::new();
        if let Some(m) = &self.m {
            out.insert("opt.m".to_string(), m.clone());
        }
        if let Some(v) = &self.v {
            out.insert("opt.v".to_string(), v.clone());
        }
        (out, self.t)
    }

    /// Restores what [`Optimizer::state`] saved; tensors are moved to
    /// `like`'s device and dtype.
    pub fn restore(&mut self, tensors: &HashMap<String, Tensor>, t: u64, like: &Tensor) -> Result<()> {
        let get = |name: &str| -> Result<Option<Tensor>> {
            match tensors.get(name) {
                None => Ok(None),
                Some(x) if x.dims() != like.dims() => Err(Error::BadShape {
                    name: name.into(),
                    expected: format!("{:?} (the trained tensor's shape)", like.dims()),
                    got: x.dims().to_vec(),
                }),
                Some(x) => Ok(Some(x.to_device(like.device())?.to_dtype(like.dtype())?)),
            }
        };
        self.m = get("opt.m")?;
        self.v = get("opt.v")?;
        self.t = t;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn settings(kind: OptimizerKind) -> Settings {
        Settings { kind, lr: 0.1, ..Settings::default() }
    }

    /// Minimises `(p − 3)²` from 0; every optimiser gets close.
    #[test]
    fn optimisers_minimise_a_quadratic() -> Result<()> {
        for kind in [OptimizerKind::Adam, OptimizerKind::Adamw, OptimizerKind::Sgd] {
            let p = Var::new(&[0f32], &Device::Cpu)?;
            let mut opt = Optimizer::new(&settings(kind));
            for _ in 0..300 {
                let g = ((p.as_tensor() - 3.0)? * 2.0)?;
                opt.step(&p, &g, 0.05)?;
            }
            let v = p.as_tensor().to_vec1::<f32>()?[0];
            assert!((v - 3.0).abs() < 0.05, "{kind:?}: {v}");
        }
        Ok(())
    }

    /// Adam's first step moves every coordinate by lr·sign(g) (bias
    /// correction makes m̂/√v̂ = ±1).
    #[test]
    fn adam_first_step_is_lr_times_sign() -> Result<()> {
        let p = Var::new(&[1f32, -2.0, 0.5], &Device::Cpu)?;
        let mut opt = Optimizer::new(&settings(OptimizerKind::Adam));
        opt.step(&p, &Tensor::new(&[0.3f32, -7.0, 1e-3], &Device::Cpu)?, 0.1)?;
        let got = p.as_tensor().to_vec1::<f32>()?;
        for (g, want) in got.iter().zip([0.9f32, -1.9, 0.4]) {
            assert!((g - want).abs() < 1e-4, "{got:?}");
        }
        Ok(())
    }

    #[test]
    fn state_round_trips_exactly() -> Result<()> {
        let run = |split: Option<usize>| -> Result<Vec<f32>> {
            let p = Var::new(&[0.2f32, -0.4], &Device::Cpu)?;
            let mut opt = Optimizer::new(&settings(OptimizerKind::Adam));
            for i in 0..10 {
                if split == Some(i) {
                    let (state, t) = opt.state();
                    opt = Optimizer::new(&settings(OptimizerKind::Adam));
                    opt.restore(&state, t, p.as_tensor())?;
                }
                let g = (p.as_tensor().sqr()? + 0.1 * i as f64)?;
                opt.step(&p, &g, 0.01)?;
            }
            Ok(p.as_tensor().to_vec1()?)
        };
        assert_eq!(run(None)?, run(Some(4))?);
        Ok(())
    }

    #[test]
    fn schedules() {
        let mut s = settings(OptimizerKind::Adam);
        assert_eq!(learning_rate(&s, 5, 10), 0.1f32 as f64);
        s.schedule = Schedule::Step { every: 3, gamma: 0.5 };
        assert!((learning_rate(&s, 6, 10) - 0.025).abs() < 1e-8);
        s.schedule = Schedule::Cosine { warmup: 2, final_ratio: 0.0 };
        assert!((learning_rate(&s, 0, 12) - 0.05).abs() < 1e-7);
        assert!((learning_rate(&s, 2, 12) - 0.1).abs() < 1e-7);
        assert!(learning_rate(&s, 12, 12).abs() < 1e-9);
    }

    /// LELSD's loop, written out: `lr_decay_steps = n // (h + 1)`; before
    /// step `i`, `if i % lr_decay_steps == lr_decay_steps - 1: lr /= 2`.
    /// The halving steps are listed by hand for the report's runs.
    #[test]
    fn halvings_follow_lelsds_step_arithmetic() {
        let halving_steps = |total: usize, count: usize| -> Vec<usize> {
            (0..total)
                .filter(|&i| {
                    halvings_before(i, total, count) > if i == 0 { 0 } else { halvings_before(i - 1, total, count) }
                })
                .collect()
        };
        // Fig. 8: 200 steps, 3 halvings → d = 50.
        assert_eq!(halving_steps(200, 3), vec![49, 99, 149, 199]);
        // LELSD's default: 4 halvings; K = 3 directions at 200·K steps.
        assert_eq!(halving_steps(600, 4), vec![119, 239, 359, 479, 599]);
        // 10 steps, 3 halvings → d = 2: a halving before every odd step.
        assert_eq!(halving_steps(10, 3), vec![1, 3, 5, 7, 9]);
        // Not divisible: 7 steps, 2 halvings → d = 2.
        assert_eq!(halving_steps(7, 2), vec![1, 3, 5]);
        let mut s = settings(OptimizerKind::Adam);
        s.lr = 1e-3;
        s.schedule = Schedule::Halvings { count: 3 };
        let lr = |i| learning_rate(&s, i, 200);
        assert_eq!(lr(0), 1e-3f32 as f64);
        assert_eq!(lr(48), 1e-3f32 as f64);
        assert_eq!(lr(49), 1e-3f32 as f64 / 2.0);
        assert_eq!(lr(150), 1e-3f32 as f64 / 8.0);
        assert_eq!(lr(199), 1e-3f32 as f64 / 16.0);
    }
}
