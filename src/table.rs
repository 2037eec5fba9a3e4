//! Rows as an aligned plain-text table, for people: `hubsync status` and `hubsync dlq` print
//! query results with it, `hubsync demo` what HubSpot holds.

/// Columns other than the last are cut to this many characters, to keep rows aligned.
const CELL: usize = 80;

/// Renders rows as an aligned text table. The last column is printed whole (a message ends
/// with what to do about it), the others cut at [`CELL`] characters.
pub(crate) fn render(columns: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count().min(CELL));
            }
        }
    }
    let last = columns.len().saturating_sub(1);
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == last {
                    c.clone()
                } else {
                    let c: String = c.chars().take(CELL).collect();
                    format!("{c:<w$}")
                }
            })
            .collect();
        format!("{}\n", parts.join(" | ").trim_end())
    };
    let mut out = line(columns);
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-"),
    );
    out.push('\n');
    for row in rows {
        out.push_str(&line(row));
    }
    out
}
