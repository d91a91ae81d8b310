"""A reader for CRIU image files, written against CRIU's published formats.

Only what the forensic commands need is decoded; unknown fields are skipped
as the protobuf wire format allows.
"""
