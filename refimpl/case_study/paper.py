"""Numbers the paper prints for GPT-Neo-1.3B (Sections 6-7, Appendix A), in one place.

Used by ``scripts/reproduce_paper.py`` (printed next to the oracle's values) and by ``refimpl.case_study.verdicts``
(the "what the paper reports" column of the claims table). Heads are labelled "layer.head".
"""

NORMS_SUBJ = {"18.11": 72.2168, "17.14": 70.7219, "13.11": 45.9200, "15.13": 39.4049, "18.0": 17.4824}
NORMS_OBJ = {"18.11": 69.2137, "17.14": 68.9342, "13.11": 51.8211, "15.13": 44.0450, "14.10": 19.5974}
NORMS_LN_SUBJ = {"18.11": 237.3204, "17.14": 236.2457, "13.11": 186.3744, "15.13": 145.4124}
NORMS_LN_OBJ = {"17.14": 159.1822, "18.11": 156.9978, "13.11": 144.9379, "15.13": 112.3253}
COSINE_SUBJ_OBJ = {"17.14": 0.9882, "18.11": 0.9831, "15.13": 0.9816, "13.11": 0.9352, "22.2": 0.9102}
PATCH_SUBJ = {"17.14": 4.7859, "13.11": 4.5473, "15.13": 1.0804, "13.3": 0.6352}
PATCH_OBJ = {"17.14": 3.5636, "15.13": 3.0652, "13.11": 2.1328, "22.2": 0.5218}
# Table 1: head -> (coupling subj -> obj, cosine, best-fit slope, r^2)
TABLE1 = {"17.14": (0.67086, 0.9882, 0.67774, 0.99811), "15.13": (0.77306, 0.9816, 0.79353, 0.98146),
          "13.11": (0.73552, 0.9352, 0.75580, 0.9274281)}
SVD_17_14_SUBJ = ([1, 0, 2, 7, 26], [0.8204, 0.2875, 0.0865, 0.0277, 0.0176])
# Table 2: (head, observable, token, effect of -50 v, effect of +50 v)
TABLE2 = [("17.14", "subj", 15, -100.780, 87.517), ("15.13", "subj", 6, -13.238, 26.132),
          ("13.11", "subj", 6, -4.111, 12.659), ("17.14", "obj", 15, -87.038, 70.865),
          ("15.13", "obj", 6, -22.681, 23.150), ("13.11", "obj", 6, -16.343, 5.992)]
BIAS = {"same": 5.6809, "diff": 4.5169}  # Section 7.2: mean logit difference (female with n, male with -n)
# Table 3: (head, token, feature multiplier k, n_diff effect, n_same effect)
TABLE3 = [("17.6", 5, -300, -3.6119, 2.7614), ("18.2", 0, -1000, -0.4604, 0.4694),
          ("19.15", 0, -300, -0.8513, 1.8351), ("23.10", 4, -120, -1.2027, 0.1038)]
LN_GAIN_VARIANCE = 0.007827  # Appendix A.2: mean variance of the LayerNorm gains
TABLE4 = [[0.0500, 0.2947, 0.2519], [0.1448, 0.0949, 0.1313], [0.1803, 0.0565, 0.0545]]  # rows: source group
RESIDUAL_COSINE = 0.5685  # cos(W_U^T n_subj, W_U^T n_obj)
VIRTUAL = {"cos 13.3 subj/obj": 0.3712, "cos 13.3->17.14 subj/obj": 0.9965,
           "cos 13.3->17.14 vs 13.3->MLP16->17.14, subj": 0.9457,
           "cos 13.3->17.14 vs 13.3->MLP16->17.14, obj": 0.5423,
           "cos 13.3->MLP16->17.14 subj/obj": 0.6072,
           "cos 6.6->15.13->17.14 (same) vs 6.6->15.13->21.13 (diff)": 0.9541, "cos 6.6 same/diff": -0.0640}
