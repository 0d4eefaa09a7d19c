/* kw_load_svg.h: a small SVG 1.1 writer for kvload's report plots: shapes, escaped text, axes with "nice" ticks on
 * linear or log10 scales. Output is plain SVG text that browsers and any SVG viewer open; no fonts or scripts are
 * referenced. Not a plotting library: the report (kw_load_report.c) decides what goes where.
 */
#ifndef KW_LOAD_SVG_H
#define KW_LOAD_SVG_H

#include <stddef.h>

#include "common/kw_buf.h"

typedef struct kw_load_svg {
    kw_buf b; /* the document being written (errors are sticky in it) */
} kw_load_svg;

/* The ten colours of the Tableau 10 palette, cycled by index. */
const char *kw_load_svg_color(size_t i);

/* Starts a document of w x h pixels with a white background and a title (a <title> element, escaped). */
void kw_load_svg_begin(kw_load_svg *s, double w, double h, const char *title);
void kw_load_svg_line(kw_load_svg *s, double x1, double y1, double x2, double y2, const char *color, double width,
                      int dashed);
void kw_load_svg_rect(kw_load_svg *s, double x, double y, double w, double h, const char *fill, double opacity);
/* Text at (x, y); anchor "start", "middle" or "end"; rotate in degrees about (x, y) (0: none). */
void kw_load_svg_text(kw_load_svg *s, double x, double y, const char *anchor, double size, const char *color,
                      double rotate, const char *text);
/* A marker: shape 0 circle, 1 square, 2 triangle, 3 diamond (cycled). */
void kw_load_svg_marker(kw_load_svg *s, double x, double y, int shape, const char *color);
void kw_load_svg_polyline(kw_load_svg *s, const double *xs, const double *ys, size_t n, const char *color,
                          double width);
/* Takes the finished document (caller frees). @return 0 or the first write failure. */
int kw_load_svg_end(kw_load_svg *s, char **out, size_t *len);

/* XML-escapes text into b. */
void kw_load_svg_escape(kw_buf *b, const char *text);

/* An axis mapping data values in [lo, hi] to pixels [p0, p1] (p1 < p0 for a y axis). */
typedef struct kw_load_axis {
    double lo, hi;
    int log10;
    double p0, p1;
} kw_load_axis;

/* Pixel position of v (log axes clamp v to lo). */
double kw_load_axis_map(const kw_load_axis *a, double v);

/* Widens [lo, hi] to round numbers and writes up to max tick values into ticks. Log axes (lo > 0) tick at powers
 * of ten (and 2 and 5 times them when there are few decades). @return the number of ticks. */
size_t kw_load_axis_ticks(kw_load_axis *a, double *ticks, size_t max);

/* A short label for a value: SI suffixes for bytes (1.5k, 20M), up to 3 significant digits otherwise. */
void kw_load_svg_format(double v, int si, char *buf, size_t cap);

#endif /* KW_LOAD_SVG_H */
