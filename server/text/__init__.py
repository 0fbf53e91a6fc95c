"""The text front-end: a document (plain, markdown or SSML) to segments of words with source offsets."""
