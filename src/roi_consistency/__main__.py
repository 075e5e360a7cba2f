"""`python -m roi_consistency …` and `torchrun -m roi_consistency train …` both land here."""
from roi_consistency.cli import main

if __name__ == "__main__":
    main()
