"""The bundled demo: scikit-learn's 8×8 digits with classes 8 and 9 made rare, the classifier
that labels and featurises them, training of the bundled model, and the augmentation study.
"""
