//! A unified diff of two texts, line by line (Myers' O((N+M)·D) algorithm),
//! for `abgate config diff`.
//!
//! Pure: no I/O. Equal texts give an empty diff.

/// One step of the edit script, by line index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equal(usize, usize),
    Delete(usize),
    Insert(usize),
}

/// The unified diff of `a` (named `a_name`) to `b`, with `context` lines
/// around each change; empty when the texts are equal.
pub fn unified(a_name: &str, b_name: &str, a: &str, b: &str, context: usize) -> String {
    if a == b {
        return String::new();
    }
    let al: Vec<&str> = a.split_inclusive('\n').collect();
    let bl: Vec<&str> = b.split_inclusive('\n').collect();
    let ops = edit_script(&al, &bl);
    let mut out = format!("--- {a_name}\n+++ {b_name}\n");
    let changes: Vec<usize> = (0..ops.len())
        .filter(|&i| !matches!(ops[i], Op::Equal(..)))
        .collect();
    let mut i = 0;
    while i < changes.len() {
        // A hunk runs from `context` ops before its first change to `context`
        // after its last; changes closer than 2·context share a hunk.
        let start = changes[i].saturating_sub(context);
        let mut last = changes[i];
        while i + 1 < changes.len() && changes[i + 1] - last <= 2 * context {
            i += 1;
            last = changes[i];
        }
        let end = (last + context + 1).min(ops.len());
        let hunk = &ops[start..end];
        let (a_start, b_start) = position(&ops, start);
        let a_len = hunk.iter().filter(|o| !matches!(o, Op::Insert(_))).count();
        let b_len = hunk.iter().filter(|o| !matches!(o, Op::Delete(_))).count();
        out.push_str(&format!(
            "@@ -{} +{} @@\n",
            range(a_start, a_len),
            range(b_start, b_len)
        ));
        for op in hunk {
            let (sign, line) = match *op {
                Op::Equal(x, _) => (' ', al[x]),
                Op::Delete(x) => ('-', al[x]),
                Op::Insert(y) => ('+', bl[y]),
            };
            out.push(sign);
            out.push_str(line);
            if !line.ends_with('\n') {
                out.push_str("\n\\ No newline at end of file\n");
            }
        }
        i += 1;
    }
    out
}

/// The line indexes in `a` and `b` where op `at` begins.
fn position(ops: &[Op], at: usize) -> (usize, usize) {
    let mut x = 0;
    let mut y = 0;
    for op in &ops[..at] {
        match op {
            Op::Equal(..) => {
                x += 1;
                y += 1;
            }
            Op::Delete(_) => x += 1,
            Op::Insert(_) => y += 1,
        }
    }
    (x, y)
}

/// `start,len` as unified diffs write it (1-based; a one-line range omits its
/// length; an empty range names the line before it).
fn range(start: usize, len: usize) -> String {
    match len {
        0 => format!("{start},0"),
        1 => format!("{}", start + 1),
        _ => format!("{},{len}", start + 1),
    }
}

/// The shortest edit script from `a` to `b` (Myers 1986, with the trace kept
/// for the backtrack).
fn edit_script(a: &[&str], b: &[&str]) -> Vec<Op> {
    let (n, m) = (a.len() as isize, b.len() as isize);
    let max = n + m;
    let off = max;
    let mut v = vec![0isize; (2 * max + 2) as usize];
    let mut trace: Vec<Vec<isize>> = Vec::new();
    'search: for d in 0..=max {
        trace.push(v.clone());
        let mut k = -d;
        while k <= d {
            let down = k == -d || (k != d && v[(off + k - 1) as usize] < v[(off + k + 1) as usize]);
            let mut x = if down {
                v[(off + k + 1) as usize]
            } else {
                v[(off + k - 1) as usize] + 1
            };
            let mut y = x - k;
            while x < n && y < m && a[x as usize] == b[y as usize] {
                x += 1;
                y += 1;
            }
            v[(off + k) as usize] = x;
            if x >= n && y >= m {
                break 'search;
            }
            k += 2;
        }
    }
    let mut ops = Vec::new();
    let (mut x, mut y) = (n, m);
    for d in (0..trace.len() as isize).rev() {
        let v = &trace[d as usize];
        let k = x - y;
        let down = k == -d || (k != d && v[(off + k - 1) as usize] < v[(off + k + 1) as usize]);
        let prev_k = if down { k + 1 } else { k - 1 };
        let prev_x = v[(off + prev_k) as usize];
        let prev_y = prev_x - prev_k;
        while x > prev_x && y > prev_y {
            ops.push(Op::Equal((x - 1) as usize, (y - 1) as usize));
            x -= 1;
            y -= 1;
        }
        if d > 0 {
            if down {
                ops.push(Op::Insert((y - 1) as usize));
            } else {
                ops.push(Op::Delete((x - 1) as usize));
            }
        }
        x = prev_x;
        y = prev_y;
    }
    ops.reverse();
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_have_an_empty_diff() {
        assert_eq!(unified("a", "b", "x\ny\n", "x\ny\n", 3), "");
        assert_eq!(unified("a", "b", "", "", 3), "");
    }

    #[test]
    fn a_changed_line_shows_with_its_context() {
        let a = "1\n2\n3\n4\n5\n6\n7\n8\n9\n";
        let b = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n";
        assert_eq!(
            unified("version 1", "version 2", a, b, 3),
            "--- version 1\n+++ version 2\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n"
        );
    }

    #[test]
    fn far_apart_changes_make_two_hunks_and_ends_are_handled() {
        let a: String = (1..=20).map(|i| format!("{i}\n")).collect();
        let b = a.replacen("1\n", "one\n", 1).replace("20\n", "20\n21");
        let d = unified("a", "b", &a, &b, 1);
        assert_eq!(
            d,
            "--- a\n+++ b\n@@ -1,2 +1,2 @@\n-1\n+one\n 2\n@@ -20 +20,2 @@\n 20\n+21\n\\ No newline at end of file\n"
        );
        assert_eq!(
            unified("a", "b", "", "x\n", 3),
            "--- a\n+++ b\n@@ -0,0 +1 @@\n+x\n"
        );
        assert_eq!(
            unified("a", "b", "x\n", "", 3),
            "--- a\n+++ b\n@@ -1 +0,0 @@\n-x\n"
        );
    }

    #[test]
    fn the_script_is_minimal_and_rebuilds_both_texts() {
        let a = ["a", "b", "c", "a", "b", "b", "a"];
        let b = ["c", "b", "a", "b", "a", "c"];
        let ops = edit_script(&a, &b);
        let edits = ops.iter().filter(|o| !matches!(o, Op::Equal(..))).count();
        assert_eq!(edits, 5, "Myers' example has distance 5");
        let left: Vec<&str> = ops
            .iter()
            .filter_map(|o| match *o {
                Op::Equal(x, _) | Op::Delete(x) => Some(a[x]),
                Op::Insert(_) => None,
            })
            .collect();
        let right: Vec<&str> = ops
            .iter()
            .filter_map(|o| match *o {
                Op::Equal(_, y) => Some(b[y]),
                Op::Insert(y) => Some(b[y]),
                Op::Delete(_) => None,
            })
            .collect();
        assert_eq!((left, right), (a.to_vec(), b.to_vec()));
    }
}
