// dlib face detection (HOG or MMOD CNN) and the 68-point shape predictor.
#include "internal.hpp"

#include <dlib/dnn.h>
#include <dlib/image_processing.h>
#include <dlib/image_processing/frontal_face_detector.h>
#include <dlib/opencv/cv_image.h>
#include <opencv2/imgproc.hpp>
#include <algorithm>
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

} // namespace

struct FNFaceModel {
    int kind = FN_DETECTOR_HOG;
    dlib::frontal_face_detector hog;
    std::unique_ptr<mmod_net> mmod;
    dlib::shape_predictor predictor;
};

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
        }
        dlib::deserialize(predictor68_path) >> model->predictor;
        *out = model.release();
        return FN_OK;
    });
}

void fn_model_free(FNFaceModel *model) { delete model; }

int fn_detect(FNFaceModel *model, const FNImage *image, int upsample, int max_side,
              FNFaceBox *boxes, int capacity, int *count, FNError *err) {
    if (!model || !image || !count || (capacity > 0 && !boxes)) return FN_EARG;
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        // Detection runs on a downscaled copy: HOG cost grows with pixels, and faces large
        // enough to be useful for 512² crops survive the shrink. Landmarks use full resolution.
        const cv::Mat &full = image->bgr;
        double scale = 1.0;
        cv::Mat work = full;
        int longest = std::max(full.cols, full.rows);
        if (max_side > 0 && longest > max_side) {
            scale = double(max_side) / longest;
            cv::resize(full, work, cv::Size(), scale, scale, cv::INTER_AREA);
        }
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
            for (auto &d : (*model->mmod)(img)) {
                found.push_back({d.rect.left() / up / scale, d.rect.top() / up / scale,
                                 (d.rect.right() + 1) / up / scale, (d.rect.bottom() + 1) / up / scale,
                                 d.detection_confidence});
            }
        } else {
            cv::Mat gray;
            cv::cvtColor(work, gray, cv::COLOR_BGR2GRAY);
            dlib::array2d<unsigned char> img;
            dlib::assign_image(img, dlib::cv_image<unsigned char>(cvIplImage(gray)));
            double up = 1.0;
            for (int i = 0; i < upsample; i++) {
                dlib::pyramid_up(img);
                up *= 2.0;
            }
            std::vector<dlib::rect_detection> dets;
            model->hog(img, dets, 0.0);
            for (auto &d : dets) {
                found.push_back({d.rect.left() / up / scale, d.rect.top() / up / scale,
                                 (d.rect.right() + 1) / up / scale, (d.rect.bottom() + 1) / up / scale,
                                 d.detection_confidence});
            }
        }
        std::stable_sort(found.begin(), found.end(), [](const FNFaceBox &a, const FNFaceBox &b) {
            return (a.right - a.left) * (a.bottom - a.top) > (b.right - b.left) * (b.bottom - b.top);
        });
        *count = static_cast<int>(found.size());
        for (int i = 0; i < capacity && i < *count; i++) boxes[i] = found[i];
        return FN_OK;
    });
}

int fn_landmarks68(FNFaceModel *model, const FNImage *image, const FNFaceBox *box, double *xy, FNError *err) {
    if (!model || !image || !box || !xy) return FN_EARG;
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        // dlib's predictor reads pixels as grey; convert once to avoid per-pixel conversions.
        cv::Mat gray;
        cv::cvtColor(image->bgr, gray, cv::COLOR_BGR2GRAY);
        dlib::cv_image<unsigned char> img(cvIplImage(gray));
        dlib::rectangle r(std::lround(box->left), std::lround(box->top),
                          std::lround(box->right) - 1, std::lround(box->bottom) - 1);
        dlib::full_object_detection shape = model->predictor(img, r);
        if (shape.num_parts() != 68) {
            fn::set_error(err, "%s", "shape predictor is not a 68-point model");
            return FN_EMODEL;
        }
        for (unsigned long i = 0; i < 68; i++) {
            xy[2 * i] = shape.part(i).x();
            xy[2 * i + 1] = shape.part(i).y();
        }
        return FN_OK;
    });
}

} // extern "C"
