"""A few hand-labelled radiology sentences: enough to train a tiny frozen-MiniLM sentence
classifier for smoke runs (the test suite's fixtures, `make bench`'s small inputs), never a
substitute for `offclip classifier train`."""

NORMAL_SENTENCES = [
    "The lungs are clear.", "No pleural effusion or pneumothorax.", "Heart size is normal.",
    "The cardiomediastinal silhouette is within normal limits.", "No acute cardiopulmonary process.",
    "No focal consolidation.", "There is no pneumothorax.", "Osseous structures are intact.",
    "Normal chest radiograph.", "The pulmonary vasculature is normal.", "No acute bony abnormality.",
    "Lungs are well expanded and clear.", "No evidence of pneumonia.", "Mediastinal contours are normal.",
]
ABNORMAL_SENTENCES = [
    "There is mild cardiomegaly.", "Small left pleural effusion.", "Right lower lobe consolidation.",
    "Calcified granuloma in the right upper lobe.", "Moderate pulmonary edema.", "Left apical pneumothorax.",
    "Patchy opacity at the left base may represent atelectasis.", "Thoracic scoliosis.",
    "Degenerative changes of the thoracic spine.", "Tortuous and calcified aorta.",
    "Right-sided central venous catheter with tip in the SVC.", "Hyperinflated lungs consistent with COPD.",
    "Multiple pulmonary nodules.", "Bibasilar atelectasis.",
]
