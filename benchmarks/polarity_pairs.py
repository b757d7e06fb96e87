"""Write the constructed pair task (``poolkit.data.readers.polarity_pairs``) as a CSV.

No sentence-pair dataset ships inside a package on the registry, so poolkit builds
one from the default data: each pair is one fresh and one rotten Rotten Tomatoes
snippet in a random order (seed 0), labelled by which of the two is the fresh one
(``first`` or ``second``). It is constructed, not a published benchmark: a pooler wins
it by telling the two texts apart and comparing their polarity.

    python benchmarks/polarity_pairs.py polarity_pairs.csv
    poolkit run --data polarity_pairs.csv --text-pair-col text_pair
"""

import sys

from poolkit.data.readers import polarity_pairs


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "polarity_pairs.csv"
    frame = polarity_pairs()
    frame.to_csv(path, index=False)
    counts = frame["label"].value_counts().to_dict()
    print(f"wrote {len(frame)} pairs to {path}: {counts}")


if __name__ == "__main__":
    main()
