"""m2f_jax/data/eval_sizes.py: the padded sizes of evaluation images (eval.pad_to)."""

import pytest

from m2f_jax.data import eval_sizes


def test_bucket_table_per_image_coarse_and_fixed():
  sizes = [(800, 1216)] * 5 + [(800, 1088)] * 3 + [(768, 1333), (1201, 800), (1333, 750)]
  image = eval_sizes.bucket_table(sizes, pad_to="image")
  assert image == {(800, 1216): (800, 1216), (800, 1088): (800, 1088),
                   (768, 1344): (768, 1344), (1216, 800): (1216, 800), (1344, 768): (1344, 768)}
  two = eval_sizes.bucket_table(sizes, pad_to="buckets:2")  # landscape and portrait, largest
  assert set(two.values()) == {(800, 1344), (1344, 800)}
  assert two[(800, 1088)] == (800, 1344) and two[(1216, 800)] == (1344, 800)
  one = eval_sizes.bucket_table(sizes, pad_to="buckets:1")
  assert set(one.values()) == {(1344, 1344)}
  four = eval_sizes.bucket_table(sizes, pad_to="buckets:4")  # 2 per orientation, by count
  assert four[(800, 1088)] == (800, 1216) and four[(800, 1216)] == (800, 1216)
  assert four[(768, 1344)] == (768, 1344)
  assert len(set(four.values())) == 4
  for table in (two, one, four):  # every image fits its bucket
    assert all(b[0] >= s[0] and b[1] >= s[1] for s, b in table.items())
  many = eval_sizes.bucket_table(sizes, pad_to="buckets:50")  # never more than per image
  assert many == image
  assert set(eval_sizes.bucket_table(sizes, pad_to="1344x1344").values()) == {(1344, 1344)}
  with pytest.raises(ValueError, match="multiples of 32"):
    eval_sizes.bucket_table(sizes, pad_to="1350x1350")


def test_parse_pad_to_names_the_choices():
  assert eval_sizes.parse_pad_to(None) == ("image", None)
  assert eval_sizes.parse_pad_to("buckets:3") == ("buckets", 3)
  assert eval_sizes.parse_pad_to("800x1344") == ("fixed", (800, 1344))
  for wrong in ("buckets:0", "buckets", "32", "image32"):
    with pytest.raises(ValueError, match="'image'.*'buckets:N'.*'HxW'"):
      eval_sizes.parse_pad_to(wrong)


def test_schedule_orders_sizes_by_their_first_full_batch():
  # Batch 2: (64, 96) fills first (images 1 and 3), (96, 64) second; (64, 64) never fills.
  sizes = [(96, 50), (64, 90), (40, 40), (60, 70), (90, 60)]
  plan = eval_sizes.schedule(sizes, batch_size=2, table=None)
  assert [s.padded_size for s in plan] == [(64, 96), (96, 64), (64, 64)]
  assert [(s.images, s.batches) for s in plan] == [(2, 1), (2, 1), (1, 1)]
  assert plan[0].output_sizes == ((64, 90), (60, 70))
  two = eval_sizes.bucket_table(sizes, pad_to="buckets:2")
  coarse = eval_sizes.schedule(sizes, batch_size=2, table=two)
  assert [s.padded_size for s in coarse] == [(64, 96), (96, 64)]  # (40, 40) joins landscape
  assert [s.images for s in coarse] == [3, 2]
  with pytest.raises(ValueError, match="not among the sizes"):
    eval_sizes.schedule([(200, 200)], batch_size=1, table=two)
