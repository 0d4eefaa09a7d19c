#!/usr/bin/env python3
"""fit_erf.py: prints the coefficient tables of the CPU backend's vector erf (kernels/cpu/kw_cpu_math.c).

[0, 4) is cut into 16 intervals of width 1/4. Interval k >= 1 gets erf(mid + t) = c0 + (c0lo + t P(t)) with
mid its centre and erf(mid) split into two floats c0 + c0lo; interval 0 gets erf(t) = t + t P(t). P has DEG
coefficients, fitted by least squares on Chebyshev nodes in double precision (math.erf) and rounded to fp32.
Prints the worst relative error of the rounded tables evaluated in double (in units of 2^-24) to stderr; the fp32
evaluation error is measured by test_kernels_backend_ops. Not run by the build or the tests.

Usage: python3 tools/fit_erf.py [DEG=6]
"""
import math
import sys

import numpy as np

WIDTH, N_INTERVALS = 0.25, 16


def f32(v):
    return float(np.float32(v))


def fit(deg):
    rows, worst = [], 0.0
    for k in range(N_INTERVALS):
        mid = 0.0 if k == 0 else WIDTH * k + WIDTH / 2
        lo, hi = WIDTH * k - mid, WIDTH * (k + 1) - mid
        m = 400
        t = np.array([(lo + hi) / 2 + (hi - lo) / 2 * math.cos(math.pi * (j + 0.5) / m) for j in range(m)])
        if k == 0:
            t = np.abs(t) + 1e-30
            target = np.array([math.erf(v) / v - 1.0 for v in t])  # erf(t) = t + t P(t)
            a = np.vander(t, deg, increasing=True)
            c0, c0lo = 0.0, 0.0
        else:
            e0 = math.erf(mid)
            c0 = f32(e0)
            c0lo = f32(e0 - c0)
            target = np.array([math.erf(mid + v) - e0 for v in t])  # erf(mid + t) - erf(mid) = t P(t)
            a = np.vander(t, deg + 1, increasing=True)[:, 1:]
        coef = [f32(v) for v in np.linalg.lstsq(a, target, rcond=None)[0]]
        tt = np.linspace(1e-6 if k == 0 else lo, hi, 4001)
        p = np.zeros_like(tt)
        for c in reversed(coef):
            p = p * tt + c
        y = (tt if k == 0 else c0) + (c0lo + p * tt)
        exact = np.array([math.erf(mid + v) for v in tt])
        worst = max(worst, float(np.max(np.abs(y - exact) / np.abs(exact))) / 2.0**-24)
        rows.append((mid, c0, c0lo, coef))
    return rows, worst


def main():
    deg = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    rows, worst = fit(deg)
    print("worst relative error of the tables in exact arithmetic: %.3f x 2^-24" % worst, file=sys.stderr)

    def fl(v):
        return "%.9ef" % v

    print("#define KW_ERF_DEG %d" % deg)
    print("static const float kw_erf_c0[16] = {%s};" % ", ".join(fl(r[1]) for r in rows))
    print("static const float kw_erf_c0lo[16] = {%s};" % ", ".join(fl(r[2]) for r in rows))
    print("static const float kw_erf_mid[16] = {%s};" % ", ".join(fl(r[0]) for r in rows))
    print("static const float kw_erf_c[%d][16] = {" % deg)
    for j in range(deg):
        print("    {%s}," % ", ".join(fl(r[3][j]) for r in rows))
    print("};")


if __name__ == "__main__":
    main()
