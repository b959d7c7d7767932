"""ffleet: process millions of media files with FFmpeg, locally or on AWS Step Functions + Batch."""
__version__ = "0.1.0"
