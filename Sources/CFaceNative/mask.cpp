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
        cv::Mat mask(H, W, CV_8U, cv::Scalar(cv::GC_PR_BGD));

        auto all = landmark_points(xy, 0, 67);
        auto jaw = landmark_points(xy, 0, 16);
        cv::Point2f eyeL(0, 0), eyeR(0, 0);
        for (int i = 36; i <= 41; i++) eyeL += cv::Point2f(float(xy[2 * i]), float(xy[2 * i + 1])) / 6.0f;
        for (int i = 42; i <= 47; i++) eyeR += cv::Point2f(float(xy[2 * i]), float(xy[2 * i + 1])) / 6.0f;
        cv::Point2f eyes = (eyeL + eyeR) * 0.5f;
        cv::Point2f chin{float(xy[2 * 8]), float(xy[2 * 8 + 1])};
        cv::Point2f down = chin - eyes;
        float eyeToChin = std::max(1.0f, float(cv::norm(down)));
        cv::Point2f up = -down / eyeToChin;                   // unit vector toward the crown
        cv::Point2f side(-up.y, up.x);                        // unit vector across the face
        float jawHalf = 0.5f * float(cv::norm(jaw.front() - jaw.back()));

        // Probable foreground: the head, from the jaw up to the crown and across to the ears and
        // hair, as a polygon built in the face's own frame so rotation is handled.
        std::vector<cv::Point> head;
        const float hw = float(p->head_width) * jawHalf;
        const float crown = float(p->hair_extent) * eyeToChin;
        for (int i = 0; i <= 16; i++) head.emplace_back(cv::Point(cvRound(jaw[i].x), cvRound(jaw[i].y)));
        for (int s = 0; s <= 12; s++) {
            // Half-ellipse over the head, right to left.
            double t = M_PI * s / 12.0;
            cv::Point2f q = eyes + side * float(hw * std::cos(t)) + up * float(crown * std::sin(t));
            head.emplace_back(cv::Point(cvRound(q.x), cvRound(q.y)));
        }
        std::vector<cv::Point> headHull;
        cv::convexHull(head, headHull);
        cv::fillConvexPoly(mask, headHull, cv::Scalar(cv::GC_PR_FGD));
        if (p->include_neck) {
            std::vector<cv::Point> neck = {
                cv::Point(cvRound(jaw[3].x), cvRound(jaw[3].y)), cv::Point(cvRound(jaw[13].x), cvRound(jaw[13].y)),
                cv::Point(cvRound((jaw[13] + down * 3.0f).x), cvRound((jaw[13] + down * 3.0f).y)),
                cv::Point(cvRound((jaw[3] + down * 3.0f).x), cvRound((jaw[3] + down * 3.0f).y))};
            cv::fillConvexPoly(mask, neck, cv::Scalar(cv::GC_PR_FGD));
        }
        // Sure foreground: the landmark hull, dilated a little so the feathered edge never cuts
        // through a landmark.
        std::vector<cv::Point> hull;
        std::vector<cv::Point> pts;
        for (auto &q : all) pts.emplace_back(cvRound(q.x), cvRound(q.y));
        cv::convexHull(pts, hull);
        cv::Mat seed = cv::Mat::zeros(H, W, CV_8U);
        cv::fillConvexPoly(seed, hull, 255);
        int grow = std::max(1, int(std::ceil(3.0 * p->feather_sigma)) + W / 128);
        cv::dilate(seed, seed, cv::getStructuringElement(cv::MORPH_ELLIPSE, cv::Size(2 * grow + 1, 2 * grow + 1)));
        mask.setTo(cv::GC_FGD, seed);
        // Sure background: the border band (the crop's corners are never the person).
        int band = std::max(1, int(std::round(p->border_fraction * W)));
        cv::Mat border = cv::Mat::zeros(H, W, CV_8U);
        cv::rectangle(border, cv::Rect(0, 0, W, H), 255, 2 * band);
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
