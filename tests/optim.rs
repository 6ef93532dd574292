//! Each optimizer update against a naive step-by-step reimplementation in f64 of
//! NNFS's formulas (chapter 10), over several steps with changing gradients.

mod common;

use common::Rng;
use fusegrad::ops::update;

const STEPS: usize = 8;
const N: usize = 37;

struct Case {
    params: Vec<f32>,
    grads: Vec<Vec<f32>>,
}

fn case(seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    Case { params: rng.vec(N), grads: (0..STEPS).map(|_| rng.vec(N)).collect() }
}

fn assert_close(what: &str, fast: &[f32], reference: &[f64]) {
    for (i, (&f, &r)) in fast.iter().zip(reference).enumerate() {
        assert!((f as f64 - r).abs() <= 1e-5 * (1.0 + r.abs()), "{what}[{i}]: {f} vs {r}");
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn sgd_with_decay() {
    let c = case(1);
    let (lr, decay) = (0.5f64, 0.1f64);
    let mut p = c.params.clone();
    let mut r = f64s(&c.params);
    for (t, g) in c.grads.iter().enumerate() {
        let cur = lr * (1.0 / (1.0 + decay * t as f64));
        update::sgd(&mut p, g, cur as f32).unwrap();
        for (ri, &gi) in r.iter_mut().zip(g) {
            *ri += -cur * gi as f64;
        }
    }
    assert_close("sgd", &p, &r);
}

#[test]
fn sgd_momentum() {
    let c = case(2);
    let (lr, mom) = (0.1f64, 0.9f64);
    let (mut p, mut m) = (c.params.clone(), vec![0.0f32; N]);
    let (mut r, mut rm) = (f64s(&c.params), vec![0.0f64; N]);
    for g in &c.grads {
        update::sgd_momentum(&mut p, g, &mut m, lr as f32, mom as f32).unwrap();
        for i in 0..N {
            let weight_updates = mom * rm[i] - lr * g[i] as f64;
            rm[i] = weight_updates;
            r[i] += weight_updates;
        }
    }
    assert_close("sgd momentum params", &p, &r);
    assert_close("sgd momentum state", &m, &rm);
}

#[test]
fn adagrad() {
    let c = case(3);
    let (lr, eps) = (1.0f64, 1e-7f64);
    let (mut p, mut cache) = (c.params.clone(), vec![0.0f32; N]);
    let (mut r, mut rc) = (f64s(&c.params), vec![0.0f64; N]);
    for g in &c.grads {
        update::adagrad(&mut p, g, &mut cache, lr as f32, eps as f32).unwrap();
        for i in 0..N {
            let g = g[i] as f64;
            rc[i] += g * g;
            r[i] += -lr * g / (rc[i].sqrt() + eps);
        }
    }
    assert_close("adagrad", &p, &r);
}

#[test]
fn rmsprop() {
    let c = case(4);
    let (lr, rho, eps) = (0.001f64, 0.9f64, 1e-7f64);
    let (mut p, mut cache) = (c.params.clone(), vec![0.0f32; N]);
    let (mut r, mut rc) = (f64s(&c.params), vec![0.0f64; N]);
    for g in &c.grads {
        update::rmsprop(&mut p, g, &mut cache, lr as f32, rho as f32, eps as f32).unwrap();
        for i in 0..N {
            let g = g[i] as f64;
            rc[i] = rho * rc[i] + (1.0 - rho) * g * g;
            r[i] += -lr * g / (rc[i].sqrt() + eps);
        }
    }
    assert_close("rmsprop", &p, &r);
}

#[test]
fn adam_with_bias_correction() {
    let c = case(5);
    let (lr, b1, b2, eps) = (0.02f64, 0.9f64, 0.999f64, 1e-7f64);
    let (mut p, mut m, mut v) = (c.params.clone(), vec![0.0f32; N], vec![0.0f32; N]);
    let (mut r, mut rm, mut rv) = (f64s(&c.params), vec![0.0f64; N], vec![0.0f64; N]);
    for (iterations, g) in c.grads.iter().enumerate() {
        let step = update::AdamStep::new(lr as f32, iterations as u64 + 1)
            .with_betas(b1 as f32, b2 as f32)
            .with_epsilon(eps as f32);
        update::adam(&mut p, g, &mut m, &mut v, step).unwrap();
        for i in 0..N {
            let g = g[i] as f64;
            rm[i] = b1 * rm[i] + (1.0 - b1) * g;
            let m_hat = rm[i] / (1.0 - b1.powi(iterations as i32 + 1));
            rv[i] = b2 * rv[i] + (1.0 - b2) * g * g;
            let v_hat = rv[i] / (1.0 - b2.powi(iterations as i32 + 1));
            r[i] += -lr * m_hat / (v_hat.sqrt() + eps);
        }
    }
    assert_close("adam params", &p, &r);
    assert_close("adam m", &m, &rm);
}

#[test]
fn updates_reject_mismatched_lengths() {
    let mut p = vec![0.0f32; 4];
    assert!(update::sgd(&mut p, &[0.0; 3], 0.1).is_err());
    assert!(update::adam(&mut p, &[0.0; 4], &mut [0.0; 4], &mut [0.0; 5], update::AdamStep::new(0.1, 1)).is_err());
    assert_eq!(p, vec![0.0; 4]);
}

#[test]
fn optimizer_setters_set_their_parameter_and_refuse_one_the_optimizer_lacks() {
    use fusegrad::nn::Optimizer;
    assert_eq!(Optimizer::sgd(0.1).with_momentum(0.5), Optimizer::sgd_momentum(0.1, 0.5));
    match Optimizer::adam(0.01).with_betas(0.8, 0.95).with_epsilon(1e-8).with_decay(1e-3) {
        Optimizer::Adam { learning_rate, decay, epsilon, beta1, beta2, .. } => {
            assert_eq!((learning_rate, decay, epsilon, beta1, beta2), (0.01, 1e-3, 1e-8, 0.8, 0.95))
        }
        other => panic!("expected Adam, got {other:?}"),
    }
    match Optimizer::rmsprop(0.01).with_rho(0.5) {
        Optimizer::RmsProp { rho, epsilon, .. } => assert_eq!((rho, epsilon), (0.5, 1e-7)),
        other => panic!("expected RMSprop, got {other:?}"),
    }
    let refused = |f: fn() -> Optimizer| {
        let msg = std::panic::catch_unwind(f).expect_err("must panic");
        msg.downcast_ref::<String>().cloned().unwrap_or_default()
    };
    assert!(refused(|| Optimizer::sgd(0.1).with_betas(0.9, 0.99)).contains("SGD has no betas"));
    assert!(refused(|| Optimizer::adam(0.1).with_momentum(0.9)).contains("Adam has no momentum"));
    assert!(refused(|| Optimizer::sgd(0.1).with_epsilon(1e-8)).contains("SGD has no epsilon"));
    assert!(refused(|| Optimizer::adagrad(0.1).with_rho(0.9)).contains("Adagrad has no rho"));
}
