"""Registration quantifier of JSN progression, reference methods and the validation harness."""
