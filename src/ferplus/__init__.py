"""FER+ facial expression recognition: data ingest, splitting, training and evaluation."""

EMOTIONS = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
)
"""The 8 FER+ emotions, in the column order of every emotions array."""

VOTE_COLUMNS = EMOTIONS + ("unknown", "NF")
"""The 10 FER+ vote columns: the 8 emotions, then unknown and NF (not a face)."""

USAGES = ("Training", "PublicTest", "PrivateTest")
"""FER2013 Usage values, in the order of the original file."""

IMAGE_SIZE = 48
"""Height and width of every FER2013 image, in pixels."""
