"""A small live chart of training: loss (left axis) and validation mIoU (right axis) per epoch.

Drawn with QPainter so the QGIS side needs no plotting library (matplotlib is not guaranteed in
every QGIS install, and importing it in the QGIS process costs seconds).
"""

from __future__ import annotations

from qgis.PyQt.QtCore import QPointF, QRectF, Qt
from qgis.PyQt.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qgis.PyQt.QtWidgets import QSizePolicy, QWidget

#: series drawn: key in the epoch's metrics → (label, colour, axis)
SERIES = (
    ("loss", "training loss", "#1f77b4", "left"),
    ("val_loss", "validation loss", "#ff7f0e", "left"),
    ("val_miou", "validation mIoU (right axis)", "#2ca02c", "right"),
)
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 48, 48, 26, 30


class MetricsChart(QWidget):
    """Per-epoch training metrics; the base model's mIoU (epoch 0) is a dashed reference line."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.epochs: list[dict] = []
        self.base_miou: float | None = None
        self.total_epochs = 1
        self.setMinimumHeight(180)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)

    def reset(self, total_epochs: int) -> None:
        """Forget the last run; the x axis spans ``total_epochs``."""
        self.epochs, self.base_miou, self.total_epochs = [], None, max(1, total_epochs)
        self.update()

    def add(self, values: dict) -> None:
        """One ``metrics`` event of the engine (epoch 0 with ``base``: the base model)."""
        if values.get("base"):
            self.base_miou = values.get("val_miou")
        else:
            self.epochs.append(values)
            self.total_epochs = max(self.total_epochs, int(values.get("epoch") or 0))
        self.update()

    # ---- drawing ------------------------------------------------------------------------
    def _plot_rect(self) -> QRectF:
        return QRectF(
            MARGIN_LEFT,
            MARGIN_TOP,
            max(10, self.width() - MARGIN_LEFT - MARGIN_RIGHT),
            max(10, self.height() - MARGIN_TOP - MARGIN_BOTTOM),
        )

    def _max_loss(self) -> float:
        losses = [
            e[key]
            for e in self.epochs
            for key in ("loss", "val_loss")
            if isinstance(e.get(key), (int, float)) and e[key] == e[key]  # not NaN
        ]
        return max(losses) * 1.1 if losses else 1.0

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt API
        """Axes, grid, the three series and a legend."""
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        painter.fillRect(self.rect(), QColor("white"))
        plot = self._plot_rect()
        max_loss = self._max_loss()
        font = QFont(painter.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        painter.setFont(font)

        def x_at(epoch: float) -> float:
            return plot.left() + plot.width() * epoch / self.total_epochs

        def y_at(value: float, axis: str) -> float:
            top = max_loss if axis == "left" else 1.0
            return plot.bottom() - plot.height() * min(max(value / top, 0.0), 1.0)

        grid = QPen(QColor("#dddddd"))
        for k in range(5):  # horizontal grid + both axes' labels
            y = plot.bottom() - plot.height() * k / 4
            painter.setPen(grid)
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            painter.setPen(QColor("#444444"))
            painter.drawText(
                QRectF(0, y - 8, MARGIN_LEFT - 4, 16),
                Qt.AlignRight | Qt.AlignVCenter,
                f"{max_loss * k / 4:.2f}",
            )
            painter.drawText(
                QRectF(plot.right() + 4, y - 8, MARGIN_RIGHT - 4, 16),
                Qt.AlignLeft | Qt.AlignVCenter,
                f"{k / 4:.2f}",
            )
        step = max(1, self.total_epochs // 10)
        for epoch in range(0, self.total_epochs + 1, step):
            painter.drawText(
                QRectF(x_at(epoch) - 15, plot.bottom() + 2, 30, 14), Qt.AlignCenter, str(epoch)
            )
        painter.drawText(
            QRectF(plot.left(), plot.bottom() + 14, plot.width(), 14), Qt.AlignCenter, "epoch"
        )
        painter.setPen(QPen(QColor("#888888")))
        painter.drawRect(plot)

        if self.base_miou is not None:
            pen = QPen(QColor("#2ca02c"), 1, Qt.DashLine)
            painter.setPen(pen)
            y = y_at(self.base_miou, "right")
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            painter.drawText(QPointF(plot.left() + 4, y - 3), f"base model {self.base_miou:.3f}")

        for key, _label, colour, axis in SERIES:
            points = [
                QPointF(x_at(e["epoch"]), y_at(e[key], axis))
                for e in self.epochs
                if isinstance(e.get(key), (int, float)) and e[key] == e[key]
            ]
            if not points:
                continue
            painter.setPen(QPen(QColor(colour), 2))
            path = QPainterPath(points[0])
            for point in points[1:]:
                path.lineTo(point)
            painter.drawPath(path)
            painter.setBrush(QColor(colour))
            for point in points:
                painter.drawEllipse(point, 2.5, 2.5)
            painter.setBrush(Qt.NoBrush)

        x = plot.left()  # legend above the plot
        for _key, label, colour, _axis in SERIES:
            painter.setPen(QPen(QColor(colour), 3))
            painter.drawLine(QPointF(x, 12), QPointF(x + 16, 12))
            painter.setPen(QColor("#222222"))
            painter.drawText(QPointF(x + 20, 16), label)
            x += 30 + painter.fontMetrics().horizontalAdvance(label)
        painter.end()
