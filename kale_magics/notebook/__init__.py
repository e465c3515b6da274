"""Reading notebooks and their ``%%kale`` annotations."""
