//! The rational-quadratic spline on its own: inverse and log-derivative against autograd, the
//! identity at zero parameters, the edges of the interval, the tails, parameters at their
//! minimum, and a batch whose discriminant rounds negative: values and gradients stay finite.
mod common;
use flowzoo::flows::{ElementwiseBijection, RationalQuadraticSpline};
use tch::{Device, Kind, Tensor};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);
const F32: (Kind, Device) = (Kind::Float, Device::Cpu);

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

fn all_finite(t: &Tensor) -> bool {
    bool::try_from(t.isfinite().all()).unwrap()
}

/// Forward then inverse of `x` with parameters `h`: inverse error, and the log-derivative
/// against autograd (the diagonal of the Jacobian, an elementwise map's only entries), and every
/// value and gradient (with respect to `x` and `h`, through both directions) finite.
fn check(s: &RationalQuadraticSpline, x: &Tensor, h: &Tensor, what: &str, tol: f64) {
    let xg = x.detach().set_requires_grad(true);
    let hg = h.detach().set_requires_grad(true);
    let (y, ld) = s.forward(&xg, &hg).unwrap();
    let ld = ld.unwrap();
    assert!(all_finite(&y) && all_finite(&ld), "{what}: non-finite forward");
    let g = Tensor::run_backward(&[y.sum(y.kind())], &[&xg], true, false).pop().unwrap();
    assert!(max_abs(&(&ld - g.log())) < tol, "{what}: log-derivative differs from autograd by {}", max_abs(&(&ld - g.log())));
    let (x2, ld2) = s.inverse(&y.detach(), &hg).unwrap();
    let ld2 = ld2.unwrap();
    assert!(all_finite(&x2) && all_finite(&ld2), "{what}: non-finite inverse");
    assert!(max_abs(&(&x2 - x)) < tol, "{what}: inverse error {}", max_abs(&(&x2 - x)));
    // The log-derivative is steep in a narrow bin: the inverse's is that at the recovered x,
    // within float64 round-off of the forward one (but not to 1e-10).
    assert!(max_abs(&(&ld2 - &ld)) < 1e3 * tol, "{what}: the inverse must report the forward log-derivative");
    // Gradients through both directions, with respect to the input and the parameters.
    let yg = y.detach().set_requires_grad(true);
    let (x3, ld3) = s.inverse(&yg, &hg).unwrap();
    let loss = (x3.square() + ld3.unwrap()).sum(x.kind()) + (y.square() + ld).sum(x.kind());
    for gr in Tensor::run_backward(&[loss], &[&xg, &hg, &yg], false, false) {
        assert!(all_finite(&gr), "{what}: non-finite gradient");
    }
}

#[test]
fn inverts_and_matches_autograd_on_random_parameters() {
    // The draws are seeded: tests that use libtorch\'s global generator take turns.
    let _rng = common::rng_lock();
    tch::manual_seed(0);
    for (bins, bound) in [(8, 3.0), (3, 1.0), (1, 2.0), (16, 5.0)] {
        let s = RationalQuadraticSpline::new(bins, bound).unwrap();
        let p = s.params_per_feature();
        assert_eq!(p, 3 * bins - 1);
        // Vectors [B, C] and images [B, C, H, W], inputs inside and outside [-B, B].
        for shape in [vec![64i64, 3], vec![4, 2, 3, 3]] {
            let x = Tensor::randn(shape.as_slice(), F64) * bound;
            let mut hs = shape.clone();
            hs[1] *= p;
            let h = Tensor::randn(hs.as_slice(), F64) * 2.0;
            check(&s, &x, &h, &format!("K={bins} B={bound} {shape:?}"), 1e-10);
        }
    }
}

#[test]
fn zero_parameters_give_the_identity() {
    let s = RationalQuadraticSpline::standard();
    let x = Tensor::linspace(-5.0, 5.0, 101, F64).reshape([101, 1]);
    let h = Tensor::zeros([101, s.params_per_feature()], F64);
    let (y, ld) = s.forward(&x, &h).unwrap();
    assert!(max_abs(&(&y - &x)) < 1e-12, "{}", max_abs(&(&y - &x)));
    assert!(max_abs(&ld.unwrap()) < 1e-12);
}

/// Exactly ±B, one ulp and 1e-9 inside and outside, and inputs only in the tails, with random
/// and extreme parameters: finite, invertible, continuous across ±B (the end derivatives are 1),
/// the identity with log-derivative exactly 0 in the tails.
#[test]
fn edges_and_tails() {
    // The draws are seeded: tests that use libtorch\'s global generator take turns.
    let _rng = common::rng_lock();
    tch::manual_seed(1);
    let s = RationalQuadraticSpline::standard();
    let b = s.tail_bound;
    let p = s.params_per_feature();
    let up = |v: f64| f64::from_bits(v.to_bits() + 1);
    let down = |v: f64| f64::from_bits(v.to_bits() - 1);
    let edges = [b, -b, down(b), up(b), -down(b), -up(b), b - 1e-9, b + 1e-9, -b + 1e-9, -b - 1e-9, 0.0];
    let x = Tensor::from_slice(&edges).reshape([edges.len() as i64, 1]);
    let n = edges.len() as i64;
    for (what, h) in [
        ("random", Tensor::randn([n, p], F64) * 3.0),
        ("zero", Tensor::zeros([n, p], F64)),
        ("one bin dominates", {
            let h = Tensor::zeros([n, p], F64);
            let _ = h.narrow(1, 2, 1).fill_(40.0);
            let _ = h.narrow(1, 8 + 5, 1).fill_(40.0);
            h
        }),
    ] {
        check(&s, &x, &h, &format!("edges, {what} parameters"), 1e-10);
        let (y, _) = s.forward(&x, &h).unwrap();
        // Continuous at ±B: the points just inside and just outside land next to each other.
        let yv = Vec::<f64>::try_from(&y.reshape([-1])).unwrap();
        for (i, j) in [(0usize, 3usize), (0, 2), (6, 7), (1, 5), (8, 9)] {
            assert!((yv[i] - yv[j]).abs() < 1e-8, "{what}: f jumps at the edge: f({}) = {}, f({}) = {}", edges[i], yv[i], edges[j], yv[j]);
        }
    }
    // Only tails: the identity, log-derivative exactly zero.
    let x = Tensor::cat(&[Tensor::rand([50, 2], F64) * 10.0 + b + 1e-12, -(Tensor::rand([50, 2], F64) * 10.0) - b - 1e-12], 0);
    let h = Tensor::randn([100, 2 * p], F64) * 5.0;
    let (y, ld) = s.forward(&x, &h).unwrap();
    assert_eq!(max_abs(&(&y - &x)), 0.0);
    assert_eq!(max_abs(&ld.unwrap()), 0.0);
    check(&s, &x, &h, "tails only", 1e-12);
}

/// Raw values driving every width, height and interior derivative to its minimum (or one bin
/// to nearly all of the interval): the map stays finite and invertible, and the derivative at
/// an interior knot is the minimum 1e-3.
#[test]
fn parameters_at_their_minimum() {
    // The draws are seeded: tests that use libtorch\'s global generator take turns.
    let _rng = common::rng_lock();
    tch::manual_seed(2);
    let s = RationalQuadraticSpline::standard();
    let (k, p) = (s.bins, s.params_per_feature());
    let x = Tensor::linspace(-3.5, 3.5, 301, F64).reshape([301, 1]);
    let h = Tensor::zeros([301, p], F64);
    let _ = h.narrow(1, 2 * k, k - 1).fill_(-1e4);
    check(&s, &x, &h, "derivatives at their minimum", 1e-10);
    let (xs, _) = s.knots_of(&x, &h).unwrap();
    let knot = xs.get(0).narrow(0, 4, 1); // an interior knot (bins equal: x_4 = 0), [1, 1]
    let (_, ld) = s.forward(&knot, &h.narrow(0, 0, 1)).unwrap();
    assert!((ld.unwrap().double_value(&[0, 0]) - (1e-3f64).ln()).abs() < 1e-9, "derivative at a knot is not the minimum");
    // Widths and heights at their minimum except one bin each, derivatives at their minimum.
    for (wide, tall) in [(0i64, 7i64), (3, 3), (7, 0)] {
        let h = Tensor::full([301, p], -30.0, F64);
        let _ = h.narrow(1, wide, 1).fill_(30.0);
        let _ = h.narrow(1, k + tall, 1).fill_(30.0);
        let _ = h.narrow(1, 2 * k, k - 1).fill_(-1e4);
        check(&s, &x, &h, &format!("bin {wide} wide, bin {tall} tall"), 1e-9);
    }
}

/// A tall bin of minimum width (slope ≈ 1000) whose upper derivative is at its minimum, and
/// float32 inputs just below that bin's top knot: b² − 4ac cancels there and rounds below zero
/// for some rows. The floored discriminant keeps values and gradients finite and the inverse
/// exact to float32 precision.
#[test]
fn a_discriminant_that_rounds_negative() {
    // The draws are seeded: tests that use libtorch\'s global generator take turns.
    let _rng = common::rng_lock();
    tch::manual_seed(3);
    let s = RationalQuadraticSpline::standard();
    let (k, p) = (s.bins, s.params_per_feature());
    let n = 4096;
    // (Found by a search over these raw values: ±30 or ±10 round to exactly zero instead.)
    let h = Tensor::zeros([n, p], F32);
    let _ = h.narrow(1, 3, 1).fill_(-5.0); // bin 3: narrow
    let _ = h.narrow(1, k, k).fill_(-5.0);
    let _ = h.narrow(1, k + 3, 1).fill_(5.0); // bin 3: tall
    let _ = h.narrow(1, 2 * k, k - 1).fill_(-1e4); // every interior derivative at its minimum
    let h = &h + Tensor::randn([n, p], F32) * 1e-3;
    let y0 = Tensor::zeros([n, 1], F32);
    let (_, ys) = s.knots_of(&y0, &h).unwrap(); // [n, K+1, 1]
    let (top, bottom) = (ys.narrow(1, 4, 1).reshape([n, 1]), ys.narrow(1, 3, 1).reshape([n, 1]));
    let y = &top - (&top - &bottom) * Tensor::rand([n, 1], F32) * 1e-6;
    let disc = s.discriminant(&y, &h).unwrap();
    let negative = i64::try_from(disc.lt(0.0).sum(Kind::Int64)).unwrap();
    assert!(negative > 0, "the crafted batch should round the discriminant below zero (min {})", disc.min().double_value(&[]));
    let yg = y.set_requires_grad(true);
    let hg = h.set_requires_grad(true);
    let (x, ld) = s.inverse(&yg, &hg).unwrap();
    let ld = ld.unwrap();
    assert!(all_finite(&x) && all_finite(&ld), "non-finite inverse where the discriminant is negative");
    let grads = Tensor::run_backward(&[(x.square() + &ld).sum(Kind::Float)], &[&yg, &hg], false, false);
    assert!(grads.iter().all(all_finite), "non-finite gradient where the discriminant is negative");
    let (y2, _) = s.forward(&x.detach(), &hg.detach()).unwrap();
    // The slope is ≈ 1000 there: float32 rounding of x by one ulp moves y by ~1e-4.
    assert!(max_abs(&(&y2 - yg.detach())) < 1e-3, "forward(inverse(y)) = y fails by {}", max_abs(&(&y2 - yg.detach())));
    assert!(negative < n, "sanity: not every row is degenerate");
}

#[test]
fn bad_settings_and_shapes_are_named() {
    assert!(RationalQuadraticSpline::new(0, 3.0).unwrap_err().to_string().contains("bins = 0"));
    assert!(RationalQuadraticSpline::new(8, 0.0).unwrap_err().to_string().contains("tail_bound = 0"));
    assert!(RationalQuadraticSpline::new(2000, 3.0).unwrap_err().to_string().contains("below 1/bins"));
    let s = RationalQuadraticSpline::standard();
    let err = s.forward(&Tensor::zeros([2, 3], F64), &Tensor::zeros([2, 3 * 23 - 1], F64)).unwrap_err().to_string();
    assert!(err.contains("23 per feature") && err.contains("[2, 69]"), "{err}");
}

/// The circular spline on angles: a bijection of the circle [-π, π) (inputs taken modulo 2π),
/// the identity at zero parameters, ±π fixed with one derivative at both ends (so the map and
/// its derivative are continuous across ±π), and inverse / log-derivative exact as above.
#[test]
fn circular_spline_is_a_smooth_bijection_of_the_circle() {
    // The draws are seeded: tests that use libtorch\'s global generator take turns.
    let _rng = common::rng_lock();
    tch::manual_seed(4);
    let pi = std::f64::consts::PI;
    let s = RationalQuadraticSpline::circular(6).unwrap();
    assert_eq!(s.params_per_feature(), 18);
    let x = (Tensor::rand([200, 2], F64) * 2.0 - 1.0) * pi;
    // (Raw parameters of scale 1.5: with 2, the steepest of 400 random bins amplify float64
    // round-off to ~1e-10.)
    let h = Tensor::randn([200, 36], F64) * 1.5;
    check(&s, &x, &h, "circular", 1e-10);
    let (y, _) = s.forward(&x, &h).unwrap();
    assert!(bool::try_from(y.abs().le(pi).all()).unwrap(), "the circle maps onto itself");
    // Angles outside [-π, π) are the same points as their representatives.
    let (y2, ld2) = s.forward(&(&x + 2.0 * pi), &h).unwrap();
    let (y3, ld3) = s.forward(&x, &h).unwrap();
    assert!(max_abs(&(&y2 - &y3)) < 1e-9 && max_abs(&(ld2.unwrap() - ld3.unwrap())) < 1e-9);
    // Zero parameters: the identity.
    let z = Tensor::zeros([200, 36], F64);
    let (yi, ldi) = s.forward(&x, &z).unwrap();
    assert!(max_abs(&(&yi - &x)) < 1e-12 && max_abs(&ldi.unwrap()) < 1e-12);
    // Continuous across ±π: values just inside either end meet, and so do the log-derivatives.
    let ends = Tensor::from_slice(&[-pi, pi - 1e-12, -pi + 1e-12]).reshape([3, 1]);
    let h1 = Tensor::randn([1, 18], F64).expand([3, 18], false) * 2.0;
    let (ye, lde) = s.forward(&ends, &h1).unwrap();
    let (ye, lde) = (Vec::<f64>::try_from(&ye.reshape([-1])).unwrap(), Vec::<f64>::try_from(&lde.unwrap().reshape([-1])).unwrap());
    assert!((ye[0] + pi).abs() < 1e-12, "-π is fixed: {}", ye[0]);
    assert!((ye[1] - pi).abs() < 1e-9 && (ye[2] + pi).abs() < 1e-9, "ends: {ye:?}");
    assert!((lde[1] - lde[0]).abs() < 1e-6 && (lde[2] - lde[0]).abs() < 1e-6, "the derivative is the same at both ends: {lde:?}");
    assert!(lde[0].abs() > 1e-3, "a learned end derivative, not 1");
    assert_eq!(s.name(), "CircularRationalQuadraticSpline(bins=6)");
}
