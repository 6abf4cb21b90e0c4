"""The scripts that trained the models the package ships (harness/zoo/synth/, harness/zoo/smol_llava/), with the
quality measurement they record in the model cards. Run from the repository root, e.g.
`python -m training.synth_training`; they are not part of the installed package, which never imports them."""
