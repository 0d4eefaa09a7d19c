/* kw_load_svg.c: SVG elements as text, and axis ticks. */
#include "loadgen/kw_load_svg.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const kw_load_palette[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                              "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};

const char *kw_load_svg_color(size_t i) {
    return kw_load_palette[i % 10];
}

void kw_load_svg_escape(kw_buf *b, const char *text) {
    for (const char *p = text; *p; ++p) {
        switch (*p) {
        case '&':
            kw_buf_append_str(b, "&amp;");
            break;
        case '<':
            kw_buf_append_str(b, "&lt;");
            break;
        case '>':
            kw_buf_append_str(b, "&gt;");
            break;
        case '"':
            kw_buf_append_str(b, "&quot;");
            break;
        case '\'':
            kw_buf_append_str(b, "&#39;");
            break;
        default:
            /* Control characters are not allowed in XML 1.0 text. */
            if ((unsigned char)*p < 0x20 && *p != '\n' && *p != '\t')
                kw_buf_append_str(b, " ");
            else
                kw_buf_append(b, p, 1);
        }
    }
}

void kw_load_svg_begin(kw_load_svg *s, double w, double h, const char *title) {
    memset(s, 0, sizeof(*s));
    kw_buf_printf(&s->b,
                  "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"%.0f\" height=\"%.0f\" "
                  "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\">\n<title>",
                  w, h, w, h);
    kw_load_svg_escape(&s->b, title);
    kw_buf_printf(&s->b, "</title>\n<rect x=\"0\" y=\"0\" width=\"%.0f\" height=\"%.0f\" fill=\"#ffffff\"/>\n", w, h);
}

void kw_load_svg_line(kw_load_svg *s, double x1, double y1, double x2, double y2, const char *color, double width,
                      int dashed) {
    kw_buf_printf(&s->b,
                  "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"%s\" stroke-width=\"%.2f\"%s/>\n", x1,
                  y1, x2, y2, color, width, dashed ? " stroke-dasharray=\"6,4\"" : "");
}

void kw_load_svg_rect(kw_load_svg *s, double x, double y, double w, double h, const char *fill, double opacity) {
    kw_buf_printf(&s->b,
                  "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\" fill-opacity=\"%.2f\"/>\n", x,
                  y, w, h, fill, opacity);
}

void kw_load_svg_text(kw_load_svg *s, double x, double y, const char *anchor, double size, const char *color,
                      double rotate, const char *text) {
    kw_buf_printf(&s->b, "<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"%s\" font-size=\"%.1f\" fill=\"%s\"", x, y, anchor,
                  size, color);
    if (rotate != 0) kw_buf_printf(&s->b, " transform=\"rotate(%.1f %.2f %.2f)\"", rotate, x, y);
    kw_buf_append_str(&s->b, ">");
    kw_load_svg_escape(&s->b, text);
    kw_buf_append_str(&s->b, "</text>\n");
}

void kw_load_svg_marker(kw_load_svg *s, double x, double y, int shape, const char *color) {
    const double r = 4.5;
    switch (shape % 4) {
    case 0:
        kw_buf_printf(&s->b, "<circle cx=\"%.2f\" cy=\"%.2f\" r=\"%.1f\" fill=\"%s\"/>\n", x, y, r, color);
        break;
    case 1:
        kw_load_svg_rect(s, x - r, y - r, 2 * r, 2 * r, color, 1.0);
        break;
    case 2:
        kw_buf_printf(&s->b, "<polygon points=\"%.2f,%.2f %.2f,%.2f %.2f,%.2f\" fill=\"%s\"/>\n", x, y - r * 1.2,
                      x - r * 1.1, y + r * 0.8, x + r * 1.1, y + r * 0.8, color);
        break;
    default:
        kw_buf_printf(&s->b, "<polygon points=\"%.2f,%.2f %.2f,%.2f %.2f,%.2f %.2f,%.2f\" fill=\"%s\"/>\n", x,
                      y - r * 1.3, x + r * 1.3, y, x, y + r * 1.3, x - r * 1.3, y, color);
    }
}

void kw_load_svg_polyline(kw_load_svg *s, const double *xs, const double *ys, size_t n, const char *color,
                          double width) {
    if (n < 2) return;
    kw_buf_append_str(&s->b, "<polyline fill=\"none\" points=\"");
    for (size_t i = 0; i < n; ++i)
        kw_buf_printf(&s->b, "%s%.2f,%.2f", i ? " " : "", xs[i], ys[i]);
    kw_buf_printf(&s->b, "\" stroke=\"%s\" stroke-width=\"%.2f\"/>\n", color, width);
}

int kw_load_svg_end(kw_load_svg *s, char **out, size_t *len) {
    kw_buf_append_str(&s->b, "</svg>\n");
    return kw_buf_take(&s->b, out, len);
}

double kw_load_axis_map(const kw_load_axis *a, double v) {
    double t;
    if (a->log10) {
        if (v < a->lo) v = a->lo;
        t = (log10(v) - log10(a->lo)) / (log10(a->hi) - log10(a->lo));
    } else {
        t = (v - a->lo) / (a->hi - a->lo);
    }
    return a->p0 + t * (a->p1 - a->p0);
}

static double kw_load_nice_step(double range, int target) {
    const double raw = range / target;
    const double mag = pow(10.0, floor(log10(raw)));
    const double f = raw / mag;
    const double nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10;
    return nice * mag;
}

size_t kw_load_axis_ticks(kw_load_axis *a, double *ticks, size_t max) {
    size_t n = 0;
    if (a->log10) {
        const double lo = floor(log10(a->lo)), hi = ceil(log10(a->hi));
        a->lo = pow(10.0, lo);
        a->hi = pow(10.0, hi > lo ? hi : lo + 1);
        const int decades = (int)(log10(a->hi) - lo);
        for (int d = 0; d <= decades && n < max; ++d) {
            const double base = pow(10.0, lo + d);
            ticks[n++] = base;
            if (decades <= 2 && d < decades) {
                if (n < max) ticks[n++] = 2 * base;
                if (n < max) ticks[n++] = 5 * base;
            }
        }
        return n;
    }
    if (!(a->hi > a->lo)) {
        const double pad = a->lo == 0 ? 1 : fabs(a->lo) * 0.1;
        a->lo -= pad;
        a->hi += pad;
    }
    const double step = kw_load_nice_step(a->hi - a->lo, 5);
    a->lo = floor(a->lo / step) * step;
    a->hi = ceil(a->hi / step) * step;
    for (double v = a->lo; v <= a->hi + step * 1e-9 && n < max; v += step)
        ticks[n++] = fabs(v) < step * 1e-9 ? 0.0 : v;
    return n;
}

void kw_load_svg_format(double v, int si, char *buf, size_t cap) {
    if (si) {
        static const char *const suffix[] = {"", "k", "M", "G", "T"};
        int k = 0;
        double x = v;
        while (fabs(x) >= 1000 && k < 4) {
            x /= 1000;
            ++k;
        }
        snprintf(buf, cap, "%.3g%s", x, suffix[k]);
        return;
    }
    snprintf(buf, cap, "%.3g", v);
}
