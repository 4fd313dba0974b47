//! The 复盘 review report.
