// FFHQ / e4e face alignment (see Docs/architecture.md, "Alignment").
//
// e4e's align_face works in four steps on a PIL image; we reproduce each with OpenCV so that,
// for the same landmarks, our 256 crop matches e4e's to well above 30 dB PSNR:
//   1. shrink: if the quad is much larger than the output, downscale by an integer factor;
//   2. crop: cut the quad's bounding box plus a border (max(round(0.1·qsize), 3));
//   3. pad: where the quad still leaves the image, reflect-pad (≥ 0.3·qsize) and blend the padded
//      band toward a Gaussian blur (σ = 0.02·qsize) and the median colour;
//   4. transform: PIL's QUAD transform with bilinear sampling. For the rotated square the quad
//      is, that is an affine map, so one warpAffine does it.
#include "internal.hpp"

#include <opencv2/imgproc.hpp>
#include <algorithm>
#include <cmath>
#include <vector>

namespace {

struct Quad {
    double x[4], y[4];
    double minX() const { return *std::min_element(x, x + 4); }
    double maxX() const { return *std::max_element(x, x + 4); }
    double minY() const { return *std::min_element(y, y + 4); }
    double maxY() const { return *std::max_element(y, y + 4); }
    void shift(double dx, double dy) {
        for (int i = 0; i < 4; i++) { x[i] += dx; y[i] += dy; }
    }
    void scale(double s) {
        for (int i = 0; i < 4; i++) { x[i] /= s; y[i] /= s; }
    }
};

// numpy's round-half-to-even, as np.rint does.
int rint_even(double v) { return static_cast<int>(std::nearbyint(v)); }

// Per-channel median of a float image, as np.median(img, axis=(0, 1)).
cv::Scalar channel_median(const cv::Mat &img) {
    std::vector<cv::Mat> ch;
    cv::split(img, ch);
    cv::Scalar med;
    for (int c = 0; c < 3; c++) {
        std::vector<float> v(ch[c].begin<float>(), ch[c].end<float>());
        size_t n = v.size(), mid = n / 2;
        std::nth_element(v.begin(), v.begin() + mid, v.end());
        double m = v[mid];
        if (n % 2 == 0) {
            float lo = *std::max_element(v.begin(), v.begin() + mid);
            m = (m + lo) / 2.0;
        }
        med[c] = m;
    }
    return med;
}

// Step 3: reflect padding blended toward blur and median, in float as e4e does.
cv::Mat pad_and_blend(const cv::Mat &src, int p0, int p1, int p2, int p3, double qsize) {
    cv::Mat f;
    src.convertTo(f, CV_32FC3);
    cv::copyMakeBorder(f, f, p1, p3, p0, p2, cv::BORDER_REFLECT_101); // numpy 'reflect'
    const int h = f.rows, w = f.cols;
    cv::Mat mask(h, w, CV_32F);
    for (int yy = 0; yy < h; yy++) {
        float *m = mask.ptr<float>(yy);
        float my = 1.0f - std::min(float(yy) / p1, float(h - 1 - yy) / p3);
        for (int xx = 0; xx < w; xx++) {
            float mx = 1.0f - std::min(float(xx) / p0, float(w - 1 - xx) / p2);
            m[xx] = std::max(mx, my);
        }
    }
    const double sigma = qsize * 0.02;
    cv::Mat blur;
    // scipy.ndimage.gaussian_filter: truncate 4σ, mode 'reflect' (= BORDER_REFLECT).
    int radius = static_cast<int>(4.0 * sigma + 0.5);
    cv::GaussianBlur(f, blur, cv::Size(2 * radius + 1, 2 * radius + 1), sigma, sigma, cv::BORDER_REFLECT);
    for (int yy = 0; yy < h; yy++) {
        cv::Vec3f *p = f.ptr<cv::Vec3f>(yy);
        const cv::Vec3f *b = blur.ptr<cv::Vec3f>(yy);
        const float *m = mask.ptr<float>(yy);
        for (int xx = 0; xx < w; xx++) {
            float wgt = std::clamp(m[xx] * 3.0f + 1.0f, 0.0f, 1.0f);
            p[xx] += (b[xx] - p[xx]) * wgt;
        }
    }
    cv::Scalar med = channel_median(f);
    for (int yy = 0; yy < h; yy++) {
        cv::Vec3f *p = f.ptr<cv::Vec3f>(yy);
        const float *m = mask.ptr<float>(yy);
        for (int xx = 0; xx < w; xx++) {
            float wgt = std::clamp(m[xx], 0.0f, 1.0f);
            for (int c = 0; c < 3; c++) p[xx][c] += (float(med[c]) - p[xx][c]) * wgt;
        }
    }
    cv::Mat out;
    f.convertTo(out, CV_8UC3); // rounds to nearest and saturates, as np.uint8(np.clip(np.rint(·)))
    return out;
}

} // namespace

extern "C" int fn_align(const FNImage *image, const double quad[8], int out_size, FNImage **out, int *padded, FNError *err) {
    if (!image || !quad || out_size <= 0 || !out) {
        fn::set_error(err, "%s", "invalid alignment arguments");
        return FN_EARG;
    }
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        Quad q;
        for (int i = 0; i < 4; i++) { q.x[i] = quad[2 * i]; q.y[i] = quad[2 * i + 1]; }
        double qsize = std::hypot(q.x[3] - q.x[0], q.y[3] - q.y[0]); // side = 2|x|
        if (!(qsize > 1.0) || !std::isfinite(qsize)) {
            fn::set_error(err, "%s", "degenerate alignment quad");
            return FN_EARG;
        }
        cv::Mat img = image->bgr;
        if (padded) *padded = 0;

        // 1. Shrink.
        int shrink = static_cast<int>(std::floor(qsize / out_size * 0.5));
        if (shrink > 1) {
            cv::Mat small;
            cv::Size rsize(rint_even(double(img.cols) / shrink), rint_even(double(img.rows) / shrink));
            cv::resize(img, small, rsize, 0, 0, cv::INTER_AREA);
            img = small;
            q.scale(shrink);
            qsize /= shrink;
        }

        // 2. Crop.
        int border = std::max(rint_even(qsize * 0.1), 3);
        int c0 = std::max(int(std::floor(q.minX())) - border, 0);
        int c1 = std::max(int(std::floor(q.minY())) - border, 0);
        int c2 = std::min(int(std::ceil(q.maxX())) + border, img.cols);
        int c3 = std::min(int(std::ceil(q.maxY())) + border, img.rows);
        if (c2 <= c0 || c3 <= c1) {
            fn::set_error(err, "%s", "alignment quad lies outside the image");
            return FN_EARG;
        }
        if (c2 - c0 < img.cols || c3 - c1 < img.rows) {
            img = img(cv::Rect(c0, c1, c2 - c0, c3 - c1));
            q.shift(-c0, -c1);
        }

        // 3. Pad.
        int p0 = std::max(-int(std::floor(q.minX())) + border, 0);
        int p1 = std::max(-int(std::floor(q.minY())) + border, 0);
        int p2 = std::max(int(std::ceil(q.maxX())) - img.cols + border, 0);
        int p3 = std::max(int(std::ceil(q.maxY())) - img.rows + border, 0);
        if (std::max({p0, p1, p2, p3}) > border - 4) {
            int minPad = rint_even(qsize * 0.3);
            p0 = std::max(p0, minPad); p1 = std::max(p1, minPad);
            p2 = std::max(p2, minPad); p3 = std::max(p3, minPad);
            // copyMakeBorder reflects repeatedly when a pad exceeds the image, as numpy does.
            img = pad_and_blend(img, p0, p1, p2, p3, qsize);
            q.shift(p0, p1);
            if (padded) *padded = 1;
        }

        // 4. Transform. PIL samples output pixel (x, y) at source
        //    q0 + (q3 − q0)·(x + ½)/S + (q1 − q0)·(y + ½)/S   (pixel-index coordinates, after
        //    e4e's +0.5 on the quad and PIL's −0.5 in its bilinear filter cancel).
        const double S = out_size;
        double ax = (q.x[3] - q.x[0]) / S, ay = (q.y[3] - q.y[0]) / S;
        double bx = (q.x[1] - q.x[0]) / S, by = (q.y[1] - q.y[0]) / S;
        cv::Matx23d M(ax, bx, q.x[0] + 0.5 * (ax + bx),
                      ay, by, q.y[0] + 0.5 * (ay + by));
        cv::Mat dst;
        cv::warpAffine(img, dst, M, cv::Size(out_size, out_size), cv::INTER_LINEAR | cv::WARP_INVERSE_MAP,
                       cv::BORDER_CONSTANT, cv::Scalar(0, 0, 0));
        *out = fn::wrap(dst);
        return FN_OK;
    });
}
