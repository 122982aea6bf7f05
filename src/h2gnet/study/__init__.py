"""The paper's ablation study (designs I-IX) and its HTML report. The report receives what it shows; it starts
no pipeline step."""
