# Portico: the two commands of the quick start, and a few helpers.
.PHONY: demo test bench lint clean

demo:  ## set up .venv and run the gateway with the built-in demo
	scripts/demo.sh

test:  ## set up .venv with test extras, install system packages, run every test
	scripts/test.sh

bench:  ## run the benchmarks (prints figures and ratios against baselines)
	scripts/bootstrap.sh test,bench
	.venv/bin/python bench/proxy.py

clean:
	rm -rf .venv build *.egg-info demo-data portico-data .pytest_cache
