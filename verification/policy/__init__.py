"""The verification policy: every tolerance with its reason, the one comparison and the check records, and the
hypothesis profiles and strategies."""
