// dlib face detection (HOG or MMOD CNN) and the 68-point shape predictor.
#include "internal.hpp"

#include <dlib/dnn.h>
#include <dlib/image_processing.h>
#include <dlib/image_processing/frontal_face_detector.h>
#include <dlib/opencv/cv_image.h>
#include <opencv2/imgproc.hpp>
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

namespace {

// The network layout of dlib's mmod_human_face_detector.dat: a downsampling stack of strided
// 5×5 convolutions, three 5×5 conv blocks with 45 filters, and a 9×9 single-channel MMOD head.
// The serialized weights only load into exactly this type.
using namespace dlib;
template <long N, typename S> using con5d = con<N, 5, 5, 2, 2, S>;
template <long N, typename S> using con5 = con<N, 5, 5, 1, 1, S>;
template <typename S> using downsampler = relu<affine<con5d<32, relu<affine<con5d<32, relu<affine<con5d<16, S>>>>>>>>>;
template <typename S> using rcon5 = relu<affine<con5<45, S>>>;
using mmod_net = loss_mmod<con<1, 9, 9, 1, 1, rcon5<rcon5<rcon5<downsampler<input_rgb_image_pyramid<pyramid_down<6>>>>>>>>;

using hog_scanner = dlib::frontal_face_detector::image_scanner_type; // scan_fhog_pyramid<pyramid_down<6>>
using gray_image = dlib::array2d<unsigned char>;

// The frontal detector taken apart so that it can scan chosen levels of an image pyramid. dlib's
// detector builds a pyramid (each level a pyramid_down<6> of the one before: 5/6 the side) and
// runs five HOG filters over every level, then keeps the best-scoring of overlapping boxes. Here
// each level is scanned on its own by a scanner limited to one level, and the same non-maximum
// suppression runs over the raw detections of the levels chosen: scanning every level this way
// gives the boxes dlib's own call gives, and scanning only the coarse ones costs a fraction.
struct HogLevels {
    hog_scanner scanner; // a copy of the detector's scanner, one pyramid level per load
    std::vector<hog_scanner::fhog_filterbank> filters;
    std::vector<double> thresholds;
    dlib::test_box_overlap overlaps;

    unsigned long max_levels;

    explicit HogLevels(const dlib::frontal_face_detector &d)
        : overlaps(d.get_overlap_tester()), max_levels(d.get_scanner().get_max_pyramid_levels()) {
        scanner.copy_configuration(d.get_scanner());
        scanner.set_max_pyramid_levels(1);
        for (unsigned long i = 0; i < d.num_detectors(); i++) {
            filters.push_back(scanner.build_fhog_filterbank(d.get_w(i)));
            thresholds.push_back(d.get_w(i)(scanner.get_num_dimensions()));
        }
    }
};

// A detection and the pyramid level it came from.
struct LevelDetection {
    dlib::rect_detection det;
    size_t level;
    bool operator<(const LevelDetection &other) const { return det < other.det; }
};

// One image's pyramid, built on demand, with each level's raw detections kept once scanned.
class HogPyramid {
public:
    HogPyramid(HogLevels &hog, gray_image &&base) : hog_(hog) {
        // The levels of dlib's create_fhog_pyramid: one more while the next stays ≥ the minimum.
        dlib::rectangle r = dlib::get_rect(base);
        do {
            sizes_.push_back(r);
            r = pyr_.rect_down(r);
        } while (r.width() >= hog.scanner.get_min_pyramid_layer_width() && r.height() >= hog.scanner.get_min_pyramid_layer_height() &&
                 sizes_.size() < hog.max_levels);
        size_t levels = sizes_.size();
        images_.resize(levels);
        images_[0].swap(base);
        raw_.resize(levels);
        scanned_.assign(levels, false);
    }

    size_t levels() const { return images_.size(); }
    // A level's extent, without building it.
    const dlib::rectangle &size(size_t level) const { return sizes_[level]; }
    const gray_image &image(size_t level) {
        for (size_t l = built_; l <= level; l++) pyr_(images_[l - 1], images_[l]);
        built_ = std::max(built_, level + 1);
        return images_[level];
    }

    // dlib's object_detector over `levels`: per filter, raw detections above its threshold sorted
    // by score, all filters' together sorted by confidence, then greedy non-maximum suppression.
    std::vector<LevelDetection> detect(const std::vector<size_t> &levels) {
        std::vector<LevelDetection> all;
        for (size_t i = 0; i < hog_.filters.size(); i++) {
            std::vector<std::pair<std::pair<double, dlib::rectangle>, size_t>> dets;
            for (size_t l : levels)
                for (auto &d : scan(l)[i]) dets.push_back({d, l});
            std::sort(dets.rbegin(), dets.rend(), [](const auto &a, const auto &b) { return a.first.first < b.first.first; });
            for (auto &d : dets) {
                LevelDetection t;
                t.det.detection_confidence = d.first.first - hog_.thresholds[i];
                t.det.weight_index = i;
                t.det.rect = d.first.second;
                t.level = d.second;
                all.push_back(t);
            }
        }
        if (hog_.filters.size() > 1) std::sort(all.rbegin(), all.rend());
        std::vector<LevelDetection> kept;
        for (auto &d : all) {
            bool overlaps = std::any_of(kept.begin(), kept.end(), [&](const LevelDetection &k) { return hog_.overlaps(k.det.rect, d.det.rect); });
            if (!overlaps) kept.push_back(d);
        }
        return kept;
    }

private:
    // Raw detections of one level per filter, in level-0 pixels.
    const std::vector<std::vector<std::pair<double, dlib::rectangle>>> &scan(size_t level) {
        if (!scanned_[level]) {
            hog_.scanner.load(image(level));
            raw_[level].resize(hog_.filters.size());
            for (size_t i = 0; i < hog_.filters.size(); i++) {
                hog_.scanner.detect(hog_.filters[i], raw_[level][i], hog_.thresholds[i]);
                for (auto &d : raw_[level][i]) d.second = pyr_.rect_up(d.second, static_cast<unsigned int>(level));
            }
            scanned_[level] = true;
        }
        return raw_[level];
    }

    HogLevels &hog_;
    dlib::pyramid_down<6> pyr_;
    std::vector<dlib::rectangle> sizes_;
    std::vector<gray_image> images_;
    size_t built_ = 1;
    std::vector<std::vector<std::vector<std::pair<double, dlib::rectangle>>>> raw_;
    std::vector<bool> scanned_;
};

} // namespace

struct FNFaceModel {
    int kind = FN_DETECTOR_HOG;
    dlib::frontal_face_detector hog;
    std::unique_ptr<HogLevels> hog_levels;
    std::unique_ptr<mmod_net> mmod;
    // dlib documents the shape predictor as usable from several threads at once: the models of
    // one run's workers share it (95 MB, half a second to load) and own their detectors.
    std::shared_ptr<const dlib::shape_predictor> predictor;
};

namespace {

// Detection runs on a downscaled copy: HOG cost grows with pixels, and faces large enough to be
// useful for 512² crops survive the shrink. Landmarks use full resolution.
cv::Mat detection_copy(const cv::Mat &full, int max_side, double &scale) {
    scale = 1.0;
    int longest = std::max(full.cols, full.rows);
    if (max_side <= 0 || longest <= max_side) return full;
    scale = double(max_side) / longest;
    cv::Mat work;
    cv::resize(full, work, cv::Size(), scale, scale, cv::INTER_AREA);
    return work;
}

gray_image gray_copy(const cv::Mat &bgr) {
    cv::Mat gray;
    cv::cvtColor(bgr, gray, cv::COLOR_BGR2GRAY);
    gray_image img;
    dlib::assign_image(img, dlib::cv_image<unsigned char>(cvIplImage(gray)));
    return img;
}

// A box found on an image `up` times the detection copy, in original-image pixels.
FNFaceBox to_box(const dlib::rectangle &r, double score, double up, double scale) {
    return {r.left() / up / scale, r.top() / up / scale, (r.right() + 1) / up / scale, (r.bottom() + 1) / up / scale, score};
}

// Largest first; writes at most `capacity` boxes and the total.
void emit(std::vector<FNFaceBox> &found, FNFaceBox *boxes, int capacity, int *count) {
    std::stable_sort(found.begin(), found.end(), [](const FNFaceBox &a, const FNFaceBox &b) {
        return (a.right - a.left) * (a.bottom - a.top) > (b.right - b.left) * (b.bottom - b.top);
    });
    *count = static_cast<int>(found.size());
    for (int i = 0; i < capacity && i < *count; i++) boxes[i] = found[i];
}

} // namespace

extern "C" {

int fn_model_create(int detector_kind, const char *mmod_path, const char *predictor68_path, FNFaceModel **out, FNError *err) {
    if (!predictor68_path || !out) {
        fn::set_error(err, "%s", "a 68-point shape predictor path is required");
        return FN_EARG;
    }
    return fn::guarded(err, FN_EMODEL, [&]() -> int {
        auto model = std::make_unique<FNFaceModel>();
        model->kind = detector_kind;
        if (detector_kind == FN_DETECTOR_MMOD) {
            if (!mmod_path) {
                fn::set_error(err, "%s", "the MMOD detector needs mmod_human_face_detector.dat");
                return FN_EARG;
            }
            model->mmod = std::make_unique<mmod_net>();
            dlib::deserialize(mmod_path) >> *model->mmod;
        } else {
            model->hog = dlib::get_frontal_face_detector();
            model->hog_levels = std::make_unique<HogLevels>(model->hog);
        }
        auto predictor = std::make_shared<dlib::shape_predictor>();
        dlib::deserialize(predictor68_path) >> *predictor;
        model->predictor = std::move(predictor);
        *out = model.release();
        return FN_OK;
    });
}

int fn_model_clone(const FNFaceModel *model, FNFaceModel **out, FNError *err) {
    if (!model || !out) return FN_EARG;
    return fn::guarded(err, FN_EMODEL, [&]() -> int {
        auto copy = std::make_unique<FNFaceModel>();
        copy->kind = model->kind;
        if (model->mmod) {
            copy->mmod = std::make_unique<mmod_net>(*model->mmod);
        } else {
            copy->hog = model->hog;
            copy->hog_levels = std::make_unique<HogLevels>(copy->hog);
        }
        copy->predictor = model->predictor;
        *out = copy.release();
        return FN_OK;
    });
}

void fn_model_free(FNFaceModel *model) { delete model; }

int fn_detect(FNFaceModel *model, const FNImage *image, int upsample, int max_side,
              FNFaceBox *boxes, int capacity, int *count, FNError *err) {
    if (!model || !image || !count || (capacity > 0 && !boxes)) return FN_EARG;
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        double scale = 1.0;
        cv::Mat work = detection_copy(image->bgr, max_side, scale);
        std::vector<FNFaceBox> found;
        if (model->kind == FN_DETECTOR_MMOD) {
            cv::Mat rgb;
            cv::cvtColor(work, rgb, cv::COLOR_BGR2RGB);
            dlib::matrix<dlib::rgb_pixel> img;
            dlib::assign_image(img, dlib::cv_image<dlib::rgb_pixel>(cvIplImage(rgb)));
            double up = 1.0;
            for (int i = 0; i < upsample; i++) {
                dlib::pyramid_up(img);
                up *= 2.0;
            }
            for (auto &d : (*model->mmod)(img)) found.push_back(to_box(d.rect, d.detection_confidence, up, scale));
        } else {
            gray_image img = gray_copy(work);
            double up = 1.0;
            for (int i = 0; i < upsample; i++) {
                dlib::pyramid_up(img);
                up *= 2.0;
            }
            std::vector<dlib::rect_detection> dets;
            model->hog(img, dets, 0.0);
            for (auto &d : dets) found.push_back(to_box(d.rect, d.detection_confidence, up, scale));
        }
        emit(found, boxes, capacity, count);
        return FN_OK;
    });
}

int fn_detect_cascade(FNFaceModel *model, const FNImage *image, int upsample, int max_side, int coarse_side,
                      int lone_face_box, FNFaceBox *boxes, int capacity, int *count, int *passes, FNError *err) {
    if (!model || !image || !count || (capacity > 0 && !boxes) || upsample < 0) return FN_EARG;
    if (model->kind != FN_DETECTOR_HOG || !model->hog_levels) {
        fn::set_error(err, "%s", "the detection cascade needs the HOG detector");
        return FN_EARG;
    }
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        double scale = 1.0;
        HogPyramid pyramid(*model->hog_levels, gray_copy(detection_copy(image->bgr, max_side, scale)));
        auto levels_from = [](size_t first, size_t end) {
            std::vector<size_t> v;
            for (size_t l = first; l < end; l++) v.push_back(l);
            return v;
        };
        auto lone = [&](const std::vector<LevelDetection> &dets) {
            return dets.size() == 1 && dets[0].det.rect.width() >= lone_face_box;
        };
        std::vector<FNFaceBox> found;
        auto finish = [&](const std::vector<LevelDetection> &dets, int ran) {
            for (auto &d : dets) found.push_back(to_box(d.det.rect, d.det.detection_confidence, 1.0, scale));
            emit(found, boxes, capacity, count);
            if (passes) *passes = ran;
            return FN_OK;
        };
        int ran = 0;

        // 1. The coarse levels (no longer side above coarse_side): a fraction of the cost, and
        //    enough for a photo of one person whose face is large. Then one finer level at a time
        //    while nothing is found, or while the lone face's box comes from the finest level
        //    scanned: dlib's detector takes a face's box from the level where it scores best,
        //    which may be finer than where the face is first found. Levels scanned here are not
        //    scanned again below.
        size_t first = 0;
        while (coarse_side > 0 && first + 1 < pyramid.levels() &&
               std::max(pyramid.size(first).width(), pyramid.size(first).height()) > coarse_side)
            first++;
        std::vector<LevelDetection> dets;
        while (first > 0) {
            dets = pyramid.detect(levels_from(first, pyramid.levels()));
            ran |= FN_PASS_COARSE;
            if (dets.size() > 1 || (dets.size() == 1 && !lone(dets))) break;
            if (dets.size() == 1 && dets[0].level > first) return finish(dets, ran);
            first--;
        }
        // 2. Every level without upsampling: dlib's detector on the detection copy.
        dets = pyramid.detect(levels_from(0, pyramid.levels()));
        ran |= FN_PASS_ALL_LEVELS;
        if (upsample == 0 || lone(dets)) return finish(dets, ran);
        const double up = std::pow(2.0, upsample);
        gray_image upsampled;
        dlib::assign_image(upsampled, pyramid.image(0));
        for (int i = 0; i < upsample; i++) dlib::pyramid_up(upsampled);
        if (dets.empty()) {
            // 3a. Nothing found: dlib's detector on the upsampled copy, every level.
            std::vector<dlib::rect_detection> more;
            model->hog(upsampled, more, 0.0);
            for (auto &d : more) found.push_back(to_box(d.rect, d.detection_confidence, up, scale));
            emit(found, boxes, capacity, count);
            if (passes) *passes = ran | FN_PASS_UPSAMPLED;
            return FN_OK;
        }
        // 3b. Faces found, but not one large face alone: the upsampled levels finer than the
        //     detection copy (boxes down to 40 px at one upsampling), for the small faces of a
        //     group photo. Boxes the copy's levels found are kept as they are.
        HogPyramid fine(*model->hog_levels, std::move(upsampled));
        size_t finer = 0;
        while (finer < fine.levels() && fine.size(finer).width() > pyramid.size(0).width()) finer++;
        for (auto &d : dets) found.push_back(to_box(d.det.rect, d.det.detection_confidence, 1.0, scale));
        auto in_upsampled = [&](const dlib::rectangle &r) {
            return dlib::rectangle(std::lround(r.left() * up), std::lround(r.top() * up), std::lround((r.right() + 1) * up) - 1,
                                   std::lround((r.bottom() + 1) * up) - 1);
        };
        std::vector<dlib::rectangle> kept;
        for (auto &d : dets) kept.push_back(in_upsampled(d.det.rect));
        for (auto &d : fine.detect(levels_from(0, finer))) {
            bool seen = std::any_of(kept.begin(), kept.end(), [&](const dlib::rectangle &k) {
                return model->hog_levels->overlaps(k, d.det.rect);
            });
            if (seen) continue;
            kept.push_back(d.det.rect);
            found.push_back(to_box(d.det.rect, d.det.detection_confidence, up, scale));
        }
        if (passes) *passes = ran | FN_PASS_UPSAMPLED_FINE;
        emit(found, boxes, capacity, count);
        return FN_OK;
    });
}

int fn_landmarks68(FNFaceModel *model, const FNImage *image, const FNFaceBox *box, double *xy, FNError *err) {
    if (!model || !image || !box || !xy) return FN_EARG;
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        // dlib's predictor reads grey pixels at offsets from the face's current shape, drawn during
        // training from the mean shape's extent: all within the box give or take a fraction of
        // it. Only the box plus one box-size margin on every side is converted (pixels outside
        // the photo read as 0 either way), not the whole photo once per face.
        const cv::Mat &full = image->bgr;
        double side = std::max(box->right - box->left, box->bottom - box->top);
        int x0 = std::max(0, int(std::floor(box->left - side))), y0 = std::max(0, int(std::floor(box->top - side)));
        int x1 = std::min(full.cols, int(std::ceil(box->right + side))), y1 = std::min(full.rows, int(std::ceil(box->bottom + side)));
        if (x1 <= x0 || y1 <= y0) x0 = y0 = 0, x1 = full.cols, y1 = full.rows;
        cv::Mat gray;
        cv::cvtColor(full(cv::Rect(x0, y0, x1 - x0, y1 - y0)), gray, cv::COLOR_BGR2GRAY);
        dlib::cv_image<unsigned char> img(cvIplImage(gray));
        dlib::rectangle r(std::lround(box->left) - x0, std::lround(box->top) - y0,
                          std::lround(box->right) - 1 - x0, std::lround(box->bottom) - 1 - y0);
        dlib::full_object_detection shape = (*model->predictor)(img, r);
        if (shape.num_parts() != 68) {
            fn::set_error(err, "%s", "shape predictor is not a 68-point model");
            return FN_EMODEL;
        }
        for (unsigned long i = 0; i < 68; i++) {
            xy[2 * i] = shape.part(i).x() + x0;
            xy[2 * i + 1] = shape.part(i).y() + y0;
        }
        return FN_OK;
    });
}

} // extern "C"
