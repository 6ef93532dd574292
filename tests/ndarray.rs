//! The ndarray interop (feature `ndarray`; `.ci/run` runs `cargo test --features
//! ndarray`): views of C- and F-ordered, transposed and sliced arrays read the same
//! elements without copying, GEMMs and `fit` take them, gapped or reversed views are
//! errors with the copying way named, and `Array2` ↔ `Matrix` moves the buffer.
#![cfg(feature = "ndarray")]

use fusegrad::gemm::{gemm, Accum, Epilogue};
use fusegrad::interop::{IntoFusegrad, IntoNdarray};
use fusegrad::nn::{FitOptions, Loss, Optimizer, Sequential, Targets};
use fusegrad::{Error, Matrix};
use ndarray::{s, Array2, ShapeBuilder};

fn c_order(rows: usize, cols: usize) -> Array2<f32> {
    Array2::from_shape_fn((rows, cols), |(i, j)| (i * 100 + j) as f32)
}

#[test]
fn views_of_every_layout_read_the_same_elements_without_copying() {
    let c = c_order(7, 5);
    let f = Array2::from_shape_fn((7, 5).f(), |(i, j)| (i * 100 + j) as f32);
    let big = c_order(12, 5);
    for (name, view) in
        [("C order", c.view()), ("F order", f.view()), ("rows 3..10 of a C array", big.slice(s![3..10, ..]))]
    {
        let m = view.into_fusegrad().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((m.rows(), m.cols()), (7, 5), "{name}");
        for i in 0..7 {
            for j in 0..5 {
                assert_eq!(m.get(i, j), view[[i, j]], "{name} ({i}, {j})");
            }
        }
        // The same memory: the view's first element is the array's.
        assert!(std::ptr::eq(&m.as_slice()[0], &view[[0, 0]]), "{name}: copied");
    }
    let t = c.t().into_fusegrad().unwrap();
    assert_eq!((t.rows(), t.cols(), t.get(4, 6)), (5, 7, 604.0));
    // Gapped and reversed views: errors that name the copying way; the copy is right.
    for (name, view) in [("columns 1..4", c.slice(s![.., 1..4])), ("reversed rows", c.slice(s![..;-1, ..]))] {
        let err = view.into_fusegrad().unwrap_err();
        assert!(matches!(err, Error::InvalidView(_)) && err.to_string().contains("from_ndarray_view"), "{name}: {err}");
        let copy = Matrix::from_ndarray_view(view);
        assert_eq!(copy.into_ndarray(), view.to_owned(), "{name}");
    }
}

#[test]
fn gemm_writes_through_a_mutable_view_and_arrays_move_into_matrices() {
    let a = c_order(4, 3);
    let b = Array2::from_shape_fn((3, 2).f(), |(i, j)| (i + j) as f32);
    let mut c = Array2::<f32>::zeros((4, 2).f());
    gemm(
        c.view_mut().into_fusegrad().unwrap(),
        a.view().into_fusegrad().unwrap(),
        b.view().into_fusegrad().unwrap(),
        Accum::Overwrite,
        Epilogue::None,
    )
    .unwrap();
    assert_eq!(c, a.dot(&b));
    // Array2 → Matrix → Array2 keeps the buffer (no copy) for a fresh row-major array.
    let owned = c_order(3, 4);
    let ptr = owned.as_ptr();
    let m = Matrix::from_ndarray(owned);
    assert_eq!(m.as_slice().as_ptr(), ptr, "Array2 → Matrix copied");
    let back = m.into_ndarray();
    assert_eq!(back.as_ptr(), ptr, "Matrix → Array2 copied");
    assert_eq!(back, c_order(3, 4));
    // F-ordered and sliced owned arrays are copied into row-major order, correctly.
    assert_eq!(Matrix::from_ndarray(a.t().to_owned()).into_ndarray(), a.t());
    let mut sliced = c_order(6, 4);
    sliced.slice_collapse(s![2.., ..]);
    assert_eq!(Matrix::from_ndarray(sliced.clone()).into_ndarray(), sliced);
    // A MatRef lends itself as an ArrayView2.
    let mm = Matrix::from_fn(2, 3, |i, j| (i * 3 + j) as f32);
    assert_eq!(mm.t().into_ndarray(), Array2::from_shape_fn((3, 2), |(i, j)| (j * 3 + i) as f32));
}

#[test]
fn fit_and_predict_take_ndarray_inputs_in_any_layout() {
    let (x, y) = fusegrad::data::spiral(40, 3, 4);
    let c = x.clone().into_ndarray();
    let f = {
        let mut f = Array2::<f32>::zeros(c.dim().f());
        f.assign(&c);
        f
    };
    let build = || {
        Sequential::builder(2)
            .seed(3)
            .dense(16)
            .relu()
            .dense(3)
            .build(Loss::SoftmaxCrossEntropy, Optimizer::adam(0.02))
            .unwrap()
    };
    let opts = FitOptions::default().with_epochs(3).with_batch_size(30);
    let mut reference = build();
    reference.fit(x.view(), Targets::Classes(&y), &opts).unwrap();
    // Every other column of a wider array: a view with gaps, which fit gathers from.
    let wide = Array2::from_shape_fn((c.nrows(), 4), |(i, j)| if j % 2 == 0 { c[[i, j / 2]] } else { f32::NAN });
    for (name, view) in [("C order", c.view()), ("F order", f.view()), ("a gapped view", wide.slice(s![.., ..;2]))] {
        let mut m = build();
        m.fit(view, Targets::Classes(&y), &opts).unwrap();
        let probs = m.predict(Matrix::from_ndarray_view(view).view()).unwrap();
        assert_eq!(probs, reference.predict(x.view()).unwrap(), "{name}");
    }
}
