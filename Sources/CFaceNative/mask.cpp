// Background removal on aligned face crops (GrabCut seeded from landmarks, or a face-parsing
// ONNX network), e4e input compositing and image grids for contact sheets.
#include "internal.hpp"
#include "face_mask.h"

#include <opencv2/dnn.hpp>
#include <opencv2/imgproc.hpp>
#include <algorithm>
#include <cmath>
#include <vector>

namespace {

std::vector<cv::Point2f> landmark_points(const double *xy, int first, int last) {
    std::vector<cv::Point2f> pts;
    for (int i = first; i <= last; i++) pts.emplace_back(float(xy[2 * i]), float(xy[2 * i + 1]));
    return pts;
}

// Keeps the connected component that overlaps `seed` most, fills its holes, feathers the edge.
cv::Mat clean_and_feather(const cv::Mat &binary, const cv::Mat &seed, double sigma) {
    cv::Mat m = binary.clone();
    const int k = std::max(3, (m.cols / 64) | 1);
    cv::Mat kernel = cv::getStructuringElement(cv::MORPH_ELLIPSE, cv::Size(k, k));
    cv::morphologyEx(m, m, cv::MORPH_OPEN, kernel);
    cv::morphologyEx(m, m, cv::MORPH_CLOSE, kernel);

    cv::Mat labels;
    int n = cv::connectedComponents(m, labels, 8, CV_32S);
    if (n > 2) {
        std::vector<int> overlap(n, 0), area(n, 0);
        for (int y = 0; y < labels.rows; y++) {
            const int *l = labels.ptr<int>(y);
            const uchar *s = seed.ptr<uchar>(y);
            for (int x = 0; x < labels.cols; x++) {
                area[l[x]]++;
                if (s[x]) overlap[l[x]]++;
            }
        }
        int best = 1;
        for (int i = 2; i < n; i++)
            if (overlap[i] > overlap[best] || (overlap[i] == overlap[best] && area[i] > area[best])) best = i;
        m = (labels == best);
    }
    // Fill holes: flood the background from the border; what it cannot reach is inside.
    cv::Mat flood = m.clone();
    cv::copyMakeBorder(flood, flood, 1, 1, 1, 1, cv::BORDER_CONSTANT, 0);
    cv::floodFill(flood, cv::Point(0, 0), 255);
    cv::Mat holes = ~flood(cv::Rect(1, 1, m.cols, m.rows));
    m |= holes;
    m |= seed; // the face itself is always foreground

    cv::Mat soft;
    if (sigma > 0) {
        int r = std::max(1, int(std::ceil(3 * sigma)));
        cv::GaussianBlur(m, soft, cv::Size(2 * r + 1, 2 * r + 1), sigma, sigma, cv::BORDER_REPLICATE);
    } else {
        soft = m;
    }
    return soft;
}

// The head in the crop's own frame, from the 68 landmarks: `up` points from the chin toward the
// crown, `side` across the face; E is the eye-to-chin length and J the jaw half-width (points 0
// and 16). The skull is centred across on the jaw midpoint (`h` from the eyes), which a turned
// head moves toward the back of the head.
struct Head {
    cv::Point2f eyes, up, side;
    float E = 1, J = 1, h = 0;
    std::vector<cv::Point2f> brows; // points 17–26, left to right
    cv::Point2f at(float across, float upward) const { return eyes + side * (h + across) + up * upward; }
};

Head head_from(const double *xy) {
    auto pt = [&](int i) { return cv::Point2f(float(xy[2 * i]), float(xy[2 * i + 1])); };
    Head g;
    cv::Point2f eyeL(0, 0), eyeR(0, 0);
    for (int i = 36; i <= 41; i++) eyeL += pt(i) / 6.0f;
    for (int i = 42; i <= 47; i++) eyeR += pt(i) / 6.0f;
    g.eyes = (eyeL + eyeR) * 0.5f;
    cv::Point2f down = pt(8) - g.eyes;
    g.E = std::max(1.0f, float(cv::norm(down)));
    g.up = -down / g.E;
    g.side = cv::Point2f(-g.up.y, g.up.x);
    g.J = std::max(1.0f, 0.5f * float(cv::norm(pt(16) - pt(0))));
    g.h = ((pt(0) + pt(16)) * 0.5f - g.eyes).dot(g.side);
    for (int i = 17; i <= 26; i++) g.brows.push_back(pt(i));
    return g;
}

// Upper half-ellipse over the eye line, semi-axes a across and b up, right to left.
std::vector<cv::Point2f> dome(const Head &g, float a, float b, int steps = 24) {
    std::vector<cv::Point2f> pts;
    for (int s = 0; s <= steps; s++) {
        double t = M_PI * s / steps;
        pts.push_back(g.at(float(a * std::cos(t)), float(b * std::sin(t))));
    }
    return pts;
}

// The band above the brows: its lower edge is the brow landmarks 17–26, its upper edge the same
// points pulled toward their mean by `narrow` and raised by `rise` eye-to-chin lengths.
std::vector<cv::Point2f> brow_band(const Head &g, float rise, float narrow) {
    cv::Point2f mean(0, 0);
    for (auto &b : g.brows) mean += b / float(g.brows.size());
    std::vector<cv::Point2f> poly(g.brows);
    for (auto it = g.brows.rbegin(); it != g.brows.rend(); ++it)
        poly.push_back(mean + (*it - mean) * narrow + g.up * (rise * g.E));
    return poly;
}

std::vector<cv::Point> rounded(const std::vector<cv::Point2f> &pts) {
    std::vector<cv::Point> r;
    for (auto &q : pts) r.emplace_back(cvRound(q.x), cvRound(q.y));
    return r;
}

void fill_hull(cv::Mat &m, const std::vector<cv::Point2f> &pts, int value = 255) {
    std::vector<cv::Point> hull;
    cv::convexHull(rounded(pts), hull);
    cv::fillConvexPoly(m, hull, cv::Scalar(value));
}

} // namespace

struct FNParser {
    cv::dnn::Net net;
    int input_size;
    cv::Scalar mean, std;
};

extern "C" {

int fn_mask_grabcut(const FNImage *crop, const double *xy, const FNMaskParams *p, FNImage **out, FNError *err) {
    if (!crop || !xy || !p || !out || crop->bgr.type() != CV_8UC3) {
        fn::set_error(err, "%s", "mask needs a colour crop, 68 landmarks and parameters");
        return FN_EARG;
    }
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        const cv::Mat &img = crop->bgr;
        const int W = img.cols, H = img.rows;
        const Head g = head_from(xy);
        cv::Mat mask(H, W, CV_8U, cv::Scalar(cv::GC_PR_BGD));

        // Probable foreground: the head from the jaw up to the crown, across to the ears and the
        // hair at the sides: the jaw line and a dome over it, built in the face's own frame. Hair
        // beyond it (long hair beside the neck) stays probable background, which GrabCut still
        // turns to foreground where its colour is the hair's. (Widening the envelope below the
        // eyes for long hair swallowed as much background beside the jaw as it won hair.)
        const float hw = float(p->head_width) * g.J, crown = float(p->hair_extent) * g.E;
        std::vector<cv::Point2f> envelope = dome(g, hw, crown);
        for (int i = 0; i <= 16; i++) envelope.emplace_back(float(xy[2 * i]), float(xy[2 * i + 1]));
        cv::Mat envelopeMask = cv::Mat::zeros(H, W, CV_8U);
        fill_hull(envelopeMask, envelope);
        mask.setTo(cv::GC_PR_FGD, envelopeMask);
        if (p->include_neck) {
            cv::Point2f j3{float(xy[6]), float(xy[7])}, j13{float(xy[26]), float(xy[27])};
            cv::Point2f down = -g.up * (3.0f * g.E);
            fill_hull(mask, {j3, j13, j13 + down, j3 + down}, cv::GC_PR_FGD);
        }
        // Sure foreground: the landmark hull, dilated so the feathered edge never cuts through a
        // landmark, and the core of the skull above the brows (the dome at skull_core of the
        // skull's size: jaw half-width across, eye-to-chin up). That core is the head whatever the
        // hair (forehead, hairline, hair, bare scalp or a hat), so it also gives GrabCut's
        // foreground model the hair colour; without it the hair is learnt as background.
        cv::Mat seed = cv::Mat::zeros(H, W, CV_8U);
        std::vector<cv::Point2f> all;
        for (int i = 0; i < 68; i++) all.emplace_back(float(xy[2 * i]), float(xy[2 * i + 1]));
        fill_hull(seed, all);
        int grow = std::max(1, int(std::ceil(3.0 * p->feather_sigma)) + W / 128);
        cv::dilate(seed, seed, cv::getStructuringElement(cv::MORPH_ELLIPSE, cv::Size(2 * grow + 1, 2 * grow + 1)));
        cv::Mat core = cv::Mat::zeros(H, W, CV_8U);
        cv::fillPoly(core, std::vector<std::vector<cv::Point>>{rounded(brow_band(g, 2.0f, 1.0f))}, 255);
        cv::Mat skull = cv::Mat::zeros(H, W, CV_8U);
        fill_hull(skull, dome(g, float(p->skull_core) * g.J, float(p->skull_core) * g.E, 48));
        seed |= core & skull;
        mask.setTo(cv::GC_FGD, seed);
        // Sure background: the side and bottom border band outside the head envelope. The top
        // border is no evidence: in an FFHQ crop the hair (or the scalp) often reaches it.
        int band = std::max(1, int(std::round(p->border_fraction * W)));
        cv::Mat border = cv::Mat::zeros(H, W, CV_8U);
        cv::rectangle(border, cv::Rect(0, 0, W, H), 255, 2 * band);
        border(cv::Rect(0, 0, W, band)).setTo(0);
        cv::Mat reach;
        cv::dilate(envelopeMask, reach, cv::getStructuringElement(cv::MORPH_ELLIPSE, cv::Size(2 * band + 1, 2 * band + 1)));
        border.setTo(0, reach);
        border.setTo(0, seed);
        mask.setTo(cv::GC_BGD, border);

        // GrabCut's GMM initialisation draws from cv::theRNG(): seed it so masks are reproducible.
        cv::theRNG().state = p->seed ? p->seed : 0x5eed;
        cv::Mat bgd, fgd;
        cv::grabCut(img, mask, cv::Rect(), bgd, fgd, std::max(1, p->iterations), cv::GC_INIT_WITH_MASK);
        cv::Mat binary = ((mask == cv::GC_FGD) | (mask == cv::GC_PR_FGD));
        *out = fn::wrap(clean_and_feather(binary, seed, p->feather_sigma));
        return FN_OK;
    });
}

int fn_mask_head_checks(const FNImage *mask, const double *xy, double band_scale, double outline_scale, double core_scale,
                        FNHeadChecks *out, FNError *err) {
    if (!mask || !xy || !out || mask->bgr.channels() != 1) {
        fn::set_error(err, "%s", "head checks need a single-channel mask and 68 landmarks");
        return FN_EARG;
    }
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
    const cv::Mat &m = mask->bgr;
    const int W = m.cols, H = m.rows;
    const Head g = head_from(xy);
    cv::Mat fg = m >= 128;
    auto share = [&](const cv::Mat &region) {
        int n = cv::countNonZero(region);
        return n == 0 ? 1.0 : double(cv::countNonZero(region & fg)) / n;
    };
    // The head above the brows: above the brow landmarks and inside the skull dome.
    cv::Mat band = cv::Mat::zeros(H, W, CV_8U), skull = cv::Mat::zeros(H, W, CV_8U);
    cv::fillPoly(band, std::vector<std::vector<cv::Point>>{rounded(brow_band(g, 2.0f, 1.0f))}, 255);
    fill_hull(skull, dome(g, float(band_scale) * g.J, float(band_scale) * g.E, 48));
    band &= skull;
    out->head_band = share(band);
    out->head_band_pixels = cv::countNonZero(band);
    // The ring: what a seeded method had to decide itself (hair beyond the skull core).
    cv::Mat forced = cv::Mat::zeros(H, W, CV_8U), hull = cv::Mat::zeros(H, W, CV_8U);
    fill_hull(forced, dome(g, float(core_scale) * g.J, float(core_scale) * g.E, 48));
    std::vector<cv::Point2f> all;
    for (int i = 0; i < 68; i++) all.emplace_back(float(xy[2 * i]), float(xy[2 * i + 1]));
    fill_hull(hull, all);
    int grow = std::max(1, W / 32);
    cv::dilate(hull, hull, cv::getStructuringElement(cv::MORPH_ELLIPSE, cv::Size(2 * grow + 1, 2 * grow + 1)));
    cv::Mat ring = band & ~(forced | hull);
    out->head_ring = share(ring);
    out->head_ring_pixels = cv::countNonZero(ring);

    int inside = 0, kept = 0;
    for (int s = 0; s <= 30; s++) {
        double t = M_PI * (15.0 + 150.0 * s / 30.0) / 180.0;
        cv::Point2f q = g.at(float(outline_scale * g.J * std::cos(t)), float(outline_scale * g.E * std::sin(t)));
        int x = cvRound(q.x), y = cvRound(q.y);
        if (x < 0 || y < 0 || x >= W || y >= H) continue;
        inside++;
        if (fg.at<uchar>(y, x)) kept++;
    }
    out->head_outline = inside < 8 ? 1.0 : double(kept) / inside;
    out->outline_points = inside;

    // Far background: above the mouth corners' line and outside a dome 1.6 times the skull's.
    cv::Point2f mouth((float(xy[96]) + float(xy[108])) / 2, (float(xy[97]) + float(xy[109])) / 2);
    float mouthUp = (mouth - g.eyes).dot(g.up);
    cv::Mat far = cv::Mat::zeros(H, W, CV_8U);
    for (int y = 0; y < H; y++) {
        uchar *f = far.ptr<uchar>(y);
        for (int x = 0; x < W; x++) {
            cv::Point2f d = cv::Point2f(float(x), float(y)) - g.eyes;
            float upward = d.dot(g.up), across = d.dot(g.side) - g.h;
            if (upward < mouthUp) continue;
            float u = across / (1.6f * g.J), v = std::max(0.0f, upward) / (1.6f * g.E);
            if (u * u + v * v > 1) f[x] = 255;
        }
    }
    out->far_background = cv::countNonZero(far) == 0 ? 0.0 : double(cv::countNonZero(far & fg)) / cv::countNonZero(far);
    return FN_OK;
    });
}

int fn_parser_create(const char *onnx_path, int input_size, const float mean[3], const float std[3], FNParser **out, FNError *err) {
    if (!onnx_path || input_size <= 0 || !out) return FN_EARG;
    return fn::guarded(err, FN_EMODEL, [&]() -> int {
        auto *p = new FNParser();
        p->net = cv::dnn::readNetFromONNX(onnx_path);
        p->net.setPreferableBackend(cv::dnn::DNN_BACKEND_OPENCV);
        p->input_size = input_size;
        p->mean = cv::Scalar(mean[0], mean[1], mean[2]);
        p->std = cv::Scalar(std[0], std[1], std[2]);
        *out = p;
        return FN_OK;
    });
}

void fn_parser_free(FNParser *parser) { delete parser; }

// Resize to the network's input, RGB, (x/255 − mean)/std, NCHW; returns the first output.
static cv::Mat forward(FNParser *parser, const cv::Mat &img) {
    cv::Mat rgb;
    cv::cvtColor(img, rgb, cv::COLOR_BGR2RGB);
    cv::resize(rgb, rgb, cv::Size(parser->input_size, parser->input_size), 0, 0, cv::INTER_AREA);
    rgb.convertTo(rgb, CV_32FC3, 1.0 / 255.0);
    rgb = (rgb - parser->mean);
    std::vector<cv::Mat> ch;
    cv::split(rgb, ch);
    for (int c = 0; c < 3; c++) ch[c] /= parser->std[c];
    cv::merge(ch, rgb);
    parser->net.setInput(cv::dnn::blobFromImage(rgb)); // NCHW, no further scaling
    return parser->net.forward().clone();
}

int fn_onnx_forward(FNParser *parser, const FNImage *crop, float *out, int capacity, int *count, FNError *err) {
    if (!parser || !crop || !out || !count) return FN_EARG;
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        cv::Mat y = forward(parser, crop->bgr);
        size_t n = y.total();
        *count = int(n);
        const float *data = y.ptr<float>();
        for (size_t i = 0; i < n && int(i) < capacity; i++) out[i] = data[i];
        return FN_OK;
    });
}

int fn_mask_parse(FNParser *parser, const FNImage *crop, const int *keep, int keep_count, double sigma, FNImage **out, FNError *err) {
    if (!parser || !crop || !out || (keep_count > 0 && !keep)) return FN_EARG;
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        const cv::Mat &img = crop->bgr;
        cv::Mat logits = forward(parser, img);
        if (logits.dims != 4 || logits.size[0] != 1) {
            fn::set_error(err, "%s", "face-parsing output must be [1, C, H, W]");
            return FN_EMODEL;
        }
        const int C = logits.size[1], h = logits.size[2], w = logits.size[3];
        std::vector<bool> kept(C, false);
        for (int i = 0; i < keep_count; i++)
            if (keep[i] >= 0 && keep[i] < C) kept[keep[i]] = true;
        cv::Mat fg(h, w, CV_8U, cv::Scalar(0));
        const float *data = logits.ptr<float>();
        for (int y = 0; y < h; y++) {
            for (int x = 0; x < w; x++) {
                int best = 0;
                float bestV = data[(size_t)y * w + x];
                for (int c = 1; c < C; c++) {
                    float v = data[(size_t)c * h * w + (size_t)y * w + x];
                    if (v > bestV) { bestV = v; best = c; }
                }
                if (kept[best]) fg.at<uchar>(y, x) = 255;
            }
        }
        cv::resize(fg, fg, img.size(), 0, 0, cv::INTER_NEAREST);
        cv::Mat seed = cv::Mat::zeros(fg.size(), CV_8U);
        *out = fn::wrap(clean_and_feather(fg, seed, sigma));
        return FN_OK;
    });
}

double fn_mask_coverage(const FNImage *mask) {
    if (!mask || mask->bgr.empty() || mask->bgr.channels() != 1) return 0;
    return double(cv::countNonZero(mask->bgr >= 128)) / double(mask->bgr.total());
}

int fn_mask_resize(const FNImage *mask, int size, FNImage **out, FNError *err) {
    if (!mask || size <= 0 || !out) return FN_EARG;
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        cv::Mat r;
        cv::resize(mask->bgr, r, cv::Size(size, size), 0, 0, size < mask->bgr.cols ? cv::INTER_AREA : cv::INTER_LINEAR);
        *out = fn::wrap(r);
        return FN_OK;
    });
}

int fn_mask_zoom_out(const FNImage *mask, double scale, FNImage **out, FNError *err) {
    if (!mask || !out || mask->bgr.channels() != 1 || mask->bgr.cols != mask->bgr.rows || !(scale >= 1.0) || !std::isfinite(scale)) {
        fn::set_error(err, "%s", "zoom out needs a square single-channel mask and a finite scale >= 1");
        return FN_EARG;
    }
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        const int S = mask->bgr.cols;
        const double shift = -(scale - 1.0) * (S - 1) / 2.0;
        cv::Matx23d M(scale, 0, shift, 0, scale, shift); // output pixel → mask pixel
        cv::Mat r;
        cv::warpAffine(mask->bgr, r, M, cv::Size(S, S), cv::INTER_LINEAR | cv::WARP_INVERSE_MAP, cv::BORDER_CONSTANT, cv::Scalar(0));
        *out = fn::wrap(r);
        return FN_OK;
    });
}

double fn_mask_value_at(const FNImage *mask, double x, double y) {
    if (!mask || mask->bgr.channels() != 1) return -1;
    const cv::Mat &m = mask->bgr;
    if (x < 0 || y < 0 || x > m.cols - 1 || y > m.rows - 1) return -1;
    int x0 = int(x), y0 = int(y), x1 = std::min(x0 + 1, m.cols - 1), y1 = std::min(y0 + 1, m.rows - 1);
    double fx = x - x0, fy = y - y0;
    return (1 - fy) * ((1 - fx) * m.at<uchar>(y0, x0) + fx * m.at<uchar>(y0, x1)) +
           fy * ((1 - fx) * m.at<uchar>(y1, x0) + fx * m.at<uchar>(y1, x1));
}

int fn_composite_on_white(const FNImage *crop, const FNImage *mask, FNImage **out, FNError *err) {
    if (!crop || !mask || !out || crop->bgr.type() != CV_8UC3 || mask->bgr.channels() != 1) return FN_EARG;
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        cv::Mat m;
        cv::resize(mask->bgr, m, crop->bgr.size(), 0, 0, cv::INTER_LINEAR);
        cv::GaussianBlur(m, m, cv::Size(5, 5), 0);
        cv::Mat mf, img;
        m.convertTo(mf, CV_32F, 1.0 / 255.0);
        cv::cvtColor(mf, mf, cv::COLOR_GRAY2BGR);
        crop->bgr.convertTo(img, CV_32FC3);
        cv::Mat white(img.size(), CV_32FC3, cv::Scalar(255, 255, 255));
        cv::Mat blended = img.mul(mf) + white.mul(cv::Scalar(1, 1, 1) - mf);
        cv::Mat result;
        blended.convertTo(result, CV_8UC3);
        *out = fn::wrap(result);
        return FN_OK;
    });
}

} // extern "C"
