// Small charts for reports (balance heatmap), drawn with OpenCV.
#include "internal.hpp"
#include "face_mask.h"

#include <opencv2/imgproc.hpp>
#include <algorithm>
#include <string>

extern "C" int fn_draw_heatmap(const double *values, int rows, int cols, const char *const *row_labels, const char *const *col_labels,
                               const char *const *cell_text, const char *title, FNImage **out, FNError *err) {
    if (!values || rows <= 0 || cols <= 0 || !row_labels || !col_labels || !out) return FN_EARG;
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        const int cellW = 150, cellH = 80, left = 140, top = 90, font = cv::FONT_HERSHEY_SIMPLEX;
        cv::Mat img(top + rows * cellH + 20, left + cols * cellW + 20, CV_8UC3, cv::Scalar(255, 255, 255));
        double vmax = 0;
        for (int i = 0; i < rows * cols; i++) vmax = std::max(vmax, values[i]);
        if (title) cv::putText(img, title, cv::Point(10, 30), font, 0.7, cv::Scalar(0, 0, 0), 2, cv::LINE_AA);
        for (int c = 0; c < cols; c++)
            cv::putText(img, col_labels[c], cv::Point(left + c * cellW + 10, top - 12), font, 0.6, cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
        for (int r = 0; r < rows; r++) {
            cv::putText(img, row_labels[r], cv::Point(10, top + r * cellH + cellH / 2 + 6), font, 0.6, cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
            for (int c = 0; c < cols; c++) {
                double v = values[r * cols + c];
                double t = vmax > 0 ? v / vmax : 0;
                // White → deep blue (BGR), so darker means more identities.
                cv::Scalar colour(255 - 75 * t, 255 - 190 * t, 255 - 225 * t);
                cv::Rect cell(left + c * cellW, top + r * cellH, cellW - 2, cellH - 2);
                cv::rectangle(img, cell, colour, cv::FILLED);
                std::string text = cell_text && cell_text[r * cols + c] ? cell_text[r * cols + c] : std::to_string(int(v));
                cv::Scalar ink = t > 0.55 ? cv::Scalar(255, 255, 255) : cv::Scalar(0, 0, 0);
                cv::putText(img, text, cv::Point(cell.x + 10, cell.y + cellH / 2 + 6), font, 0.55, ink, 1, cv::LINE_AA);
            }
        }
        *out = fn::wrap(img);
        return FN_OK;
    });
}
