//! A Fenwick tree over message seqs counting live (not deleted) messages, so
//! unread counts cost O(log n) however long the conversation.

#[derive(Debug, Default)]
pub struct Fenwick {
    tree: Vec<i64>,
}

impl Fenwick {
    /// Appends position `len + 1` with `value`.
    pub fn push(&mut self, value: i64) {
        let position = self.tree.len() + 1;
        // A new node covers (position - lowbit, position]: sum the children it absorbs.
        let lowbit = position & position.wrapping_neg();
        let mut sum = value;
        let mut child = 1;
        while child < lowbit {
            sum += self.tree[position - child - 1];
            child <<= 1;
        }
        self.tree.push(sum);
    }

    pub fn add(&mut self, position: usize, delta: i64) {
        let mut index = position;
        while index <= self.tree.len() {
            self.tree[index - 1] += delta;
            index += index & index.wrapping_neg();
        }
    }

    /// Sum of positions 1..=position.
    pub fn prefix(&self, position: usize) -> i64 {
        let mut index = position.min(self.tree.len());
        let mut sum = 0;
        while index > 0 {
            sum += self.tree[index - 1];
            index -= index & index.wrapping_neg();
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_plain_sum() {
        let mut tree = Fenwick::default();
        let mut plain = Vec::new();
        for step in 0..300usize {
            tree.push(1);
            plain.push(1i64);
            if step % 7 == 3 {
                let position = step / 2 + 1;
                tree.add(position, -plain[position - 1]);
                plain[position - 1] = 0;
            }
            for probe in [0, step / 3, step + 1] {
                assert_eq!(tree.prefix(probe), plain.iter().take(probe).sum::<i64>());
            }
        }
    }
}
